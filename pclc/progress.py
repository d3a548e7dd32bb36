"""Progress where a user waits: tqdm bars on a terminal, nothing on a pipe or in a log file (there, each cell's
finished line is the progress). One home for the choice, so that training, attacks and C&W's search agree."""

from __future__ import annotations

import sys


class Silent:
    """The bar of a non-terminal: takes the same calls and shows nothing."""

    def update(self, n: int = 1) -> None:
        """Nothing to advance."""

    def set_postfix(self, *args, **kwargs) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def interactive() -> bool:
    """Bars only where a person watches: stderr is a terminal."""
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str = "it", nested: bool = False):
    """A tqdm bar on a terminal (``nested``: a second line under the cell's bar, removed when done); a
    :class:`Silent` one otherwise."""
    if not interactive():
        return Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, position=1 if nested else None, dynamic_ncols=True)


def eta_line(
    k: int,
    n: int,
    label: str,
    predicted: list[float | None],
    measured: float,
    done_predicted: float,
    unplanned: str | None = None,
) -> str:
    """``cell k/n <label>: predicted <this cell>; ETA for the rest <cells k..n>``. ``predicted`` holds the
    planner's seconds for cells k..n (None where nothing measured the work); the ETA is scaled by how the
    finished cells' measured time compares with their prediction (``measured`` / ``done_predicted``), so it
    learns this machine's pace. ``unplanned`` names work that follows the cells and is in no prediction (the
    audit's attacks): then a cell with nothing left says so of its training and evaluation only, and the line
    ends by naming what the ETA leaves out, so that "0 s" never reads as "finished"."""
    this = predicted[0] if predicted else None
    scale = measured / done_predicted if done_predicted > 0 and measured > 0 else 1.0
    if this is None:
        now = "predicted time unknown (no measurement on this device: make bench)"
    elif this == 0:
        now = "nothing left to train or evaluate" if unplanned else "nothing left to compute"
        now += " (finished results reused)"
    else:
        now = f"predicted {_minutes(this * scale)}"
    if any(p is None for p in predicted):
        rest = "ETA unknown"
    else:
        rest = f"ETA for the rest {_minutes(sum(predicted) * scale)}"  # type: ignore[arg-type]
        rest += f" (planner x {scale:.2f}, this machine's pace so far)" if scale != 1.0 else " (planner)"
    tail = f"; not in this ETA: {unplanned}" if unplanned else ""
    return f"cell {k}/{n} {label}: {now}; {rest}{tail}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
