"""The one registry mechanism: named functions (losses, attacks, models, dataset loaders); losses and attacks are
reached from configs through Hydra's ``_target_``.

A component's config is ``{_target_: <dotted path of a registered function>, _partial_: true, <params>}``.
:meth:`Registry.build` checks, before any work, that the target is registered and that every parameter
is one the function accepts (a misspelt budget is an error, not a silent default), runs the component's
own value checks, then builds it with ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Registered:
    """A registered function, the parameters it takes from a config, and what else is known of it."""

    name: str
    fn: Callable
    params: tuple[str, ...]  # keyword parameters a config may set
    required: tuple[str, ...]  # ... and those it must set (no default)
    meta: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()  # parameters that are true/false (annotated or defaulting so)

    @property
    def target(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


def params_of(cfg: Mapping | DictConfig) -> dict[str, Any]:
    """A component config's parameters: everything but Hydra's ``_target_``/``_partial_`` keys."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return {k: v for k, v in c.items() if not str(k).startswith("_")}


class Registry:
    """Named functions of one kind; ``positional`` are the call-time arguments a config never sets."""

    def __init__(self, kind: str, positional: tuple[str, ...]):
        self.kind, self.positional = kind, positional
        self._by_name: dict[str, Registered] = {}

    def register(self, name: str, **meta) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            if name in self._by_name:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            skip = set(self.positional) | set(meta.get("runtime", ()))  # runtime: passed by code, never by configs
            variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            params = inspect.signature(fn).parameters.items()
            sig = {k: v for k, v in params if k not in skip and v.kind not in variadic}
            required = tuple(k for k, v in sig.items() if v.default is inspect.Parameter.empty)
            flags = tuple(k for k, v in sig.items() if v.annotation in (bool, "bool") or isinstance(v.default, bool))
            self._by_name[name] = Registered(name, fn, tuple(sig), required, meta, flags)
            return fn

        return deco

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Registered:
        if name not in self._by_name:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {self.names()}")
        return self._by_name[name]

    def entry(self, cfg: Mapping | DictConfig) -> Registered:
        """The registered function a component config names, its parameters checked (nothing is run)."""
        target = (cfg or {}).get("_target_")
        if target is None:
            raise ValueError(
                f"a {self.kind} config needs `_target_` (one of: "
                f"{', '.join(e.target for e in self._by_name.values())}); got {dict(cfg or {})}"
            )
        found = [e for e in self._by_name.values() if e.target == target]
        if not found:
            raise ValueError(
                f"`_target_: {target}` is not a registered {self.kind}; known: "
                + ", ".join(f"{e.name} ({e.target})" for e in self._by_name.values())
            )
        e = found[0]
        params = params_of(cfg)
        unknown = sorted(set(params) - set(e.params))
        if unknown:
            raise ValueError(f"{self.kind} {e.name!r} got unknown parameter(s) {unknown}; accepted: {list(e.params)}")
        missing = sorted(set(e.required) - set(params))
        if missing:
            raise ValueError(f"{self.kind} {e.name!r} needs parameter(s) {missing} (accepted: {list(e.params)})")
        for k, v in params.items():
            if _holds_target(v):  # instantiate would build it: a parameter is a value, never code
                raise ValueError(f"{self.kind} {e.name!r}: parameter {k} holds a `_target_`; parameters are values")
            if k in e.flags and not isinstance(v, bool):  # rand_init=off would be a truthy string
                raise ValueError(f"{self.kind} {e.name!r}: {k} must be true or false, got {v!r}")
        check = e.meta.get("check")
        if check is not None:
            check(params)
        return e

    def build(self, cfg: Mapping | DictConfig, **kwargs) -> Callable:
        """``functools.partial`` of the registered function with the config's parameters (and ``kwargs``)."""
        from hydra.utils import instantiate

        self.entry(cfg)
        c = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        return instantiate(c, _partial_=True, **kwargs)


def _holds_target(v: Any) -> bool:
    if isinstance(v, Mapping):
        return "_target_" in v or any(_holds_target(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_holds_target(x) for x in v)
    return False
