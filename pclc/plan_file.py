"""``plan=true plan_out=<file>.md``: the planner's prediction as a results file (pclc.plan computes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from pclc.config import resolve_device
from pclc.store import machine_line


def other_cpu_note(bench: dict | None, here: str) -> str | None:
    """A line when the benchmark the costs are scaled from ran on a CPU other than this one (or one it does not
    name: files from before pclc recorded the model): FLOPs scaling carries its speed over, not this CPU's. A GPU's
    bench read on a CPU host is left alone: it predicts that GPU's time, as the plan says."""
    name = ((bench or {}).get("device") or {}).get("name", "")
    if not (name.startswith("cpu") and here.startswith("cpu")) or name == here:
        return None
    return (
        f"the benchmark's CPU ({name}) is not this one ({here}) or is not named in it: the prediction is that "
        "CPU's speed scaled by FLOPs; `make bench` here measures this one's"
    )


def write_plan(cfg: DictConfig, out: dict[str, Any], bench: dict | None, bench_file: Path, sources) -> Path:
    """``plan_out=<file>.md``: the plan as a results file, with the provenance of this run and of the benchmark
    its costs were scaled from (a GPU's bench read on a CPU host predicts that GPU's time)."""
    from pclc.files import atomic_write_text
    from pclc.headers import config_block, config_yaml, header, markdown_table
    from pclc.store import provenance

    prov = provenance(resolve_device(str(cfg.get("device", "auto"))))
    bench = bench if "bench" in sources else None
    d = (bench or {}).get("device") or {}
    on = d.get("name", "the benchmark's device (not recorded in it)") if bench else "this device"
    notes = [f"machine: {machine_line(prov['machine'])}"]
    if bench:
        notes.append(
            f"costs scaled by FLOPs from `{bench_file}`: measured on {on} (commit `{d.get('commit', '?')}`, "
            f"{d.get('date', '?')}), torch {d.get('torch', '?')}"
        )
        notes += [out["bench_note"]] if out.get("bench_note") else []
    if "store" in sources:
        notes.append(f"costs measured in the run store `{cfg.store}` where it has them")
    total = out["predicted_seconds"]
    lines = [
        header(f"Plan: experiment={cfg.experiment.name}", prov, str(cfg.get("profile", "full")), notes, None),
        f"**Predicted time for the rest: {total / 60:.1f} min ({total / 3600:.2f} h) on {on}**"
        + (f"; not predicted: {len(out['unmeasured'])} items (no measurement)" if out["unmeasured"] else "")
        + (
            f"; the audit's attacks on {len(out['audits_not_predicted'])} runs are not in it"
            if out["audits_not_predicted"]
            else ""
        ),
        "",
        markdown_table(pd.DataFrame(out["cells"])),
        "",
        *config_block(config_yaml(cfg)),
    ]
    path = Path(cfg.plan_out)
    atomic_write_text(path, "\n".join(lines))
    return path
