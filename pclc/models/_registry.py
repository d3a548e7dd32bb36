"""The model registry (timm's pattern): each model records the input shapes its architecture accepts, so a
model/dataset mismatch fails up front with a readable message instead of a shape error deep in ``forward``. Kept
out of the package's ``__init__``, so that the architecture modules register themselves without importing it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from pclc.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """Registry entry: constructor plus the input shapes it accepts."""

    name: str
    builder: Callable[..., nn.Module]
    in_channels: int
    input_sizes: tuple[int, ...]

    def accepts(self) -> str:
        sizes = " or ".join(f"{self.in_channels}x{s}x{s}" for s in self.input_sizes)
        return sizes


class UnknownModelError(KeyError, ValueError):
    """Unknown model name; catchable as either KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# Call-time arguments: what the dataset gives; a model config's own keyword arguments are the rest.
MODELS = Registry("model", positional=("num_classes", "in_channels", "input_size"))


def register_model(
    name: str, *, in_channels: int, input_sizes: Sequence[int]
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(num_classes, in_channels, input_size, **kw)``."""
    return MODELS.register(name, in_channels=int(in_channels), input_sizes=tuple(int(s) for s in input_sizes))


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    """Registry entry for ``name``; raises UnknownModelError listing the known names."""
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    e = MODELS.get(name)
    return ModelSpec(e.name, e.fn, e.meta["in_channels"], e.meta["input_sizes"])


def _square_size(input_size: int | Sequence[int]) -> int | tuple[int, ...]:
    if isinstance(input_size, int):
        return input_size
    size = tuple(int(s) for s in input_size)
    return size[0] if len(size) == 2 and size[0] == size[1] else size


def check_model_fits(name: str, in_channels: int, input_size: int | Sequence[int], num_classes: int) -> ModelSpec:
    """Raise ValueError unless model ``name`` accepts ``in_channels x input_size^2`` and ``num_classes``."""
    spec = get_model_spec(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"model {name!r} needs num_classes >= 2 (an integer), got {num_classes!r}")
    size = _square_size(input_size)
    if in_channels == spec.in_channels and size in spec.input_sizes:
        return spec
    given = f"{in_channels}x{size}x{size}" if isinstance(size, int) else f"{in_channels}x{'x'.join(map(str, size))}"
    specs = [get_model_spec(n) for n in list_models()]
    fitting = [s.name for s in specs if s.in_channels == in_channels and size in s.input_sizes]
    hint = (
        f"use {' or '.join(sorted(fitting))} for this dataset"
        if fitting
        else f"no registered model takes {given} inputs"
    )
    raise ValueError(f"model {name!r} takes {spec.accepts()} inputs, but dataset gives {given}; {hint}")


def create_model(name: str, num_classes: int, in_channels: int, input_size: int | Sequence[int], **kwargs) -> nn.Module:
    """Build a registered model after checking it fits the dataset's input shape."""
    spec = check_model_fits(name, in_channels, input_size, num_classes)
    return spec.builder(num_classes=num_classes, in_channels=in_channels, input_size=_square_size(input_size), **kwargs)
