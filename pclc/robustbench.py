"""RobustBench's flat record of one model, as JSON: clean accuracy, the paper's reported number and the reference
AutoAttack's robust accuracy, per eps, with the run, its weights hash and the provenance lines of the file.

One schema for every writer (the audit: ``<out_dir>/audit/<run>.json``, the whole audited set;
``experiment=autoattack`` and ``experiment=baselines``: ``<out_dir>/<experiment>/<model>.json``), so that a reader,
or a script that collects them, reads one kind of file; ``n`` says how many test images each number counts."""

from __future__ import annotations

from typing import Any

PER_EPS = ("clean_acc", "autoattack_acc", "reported", "paper_attacks_here", "n")


def record(
    *,
    name: str,
    run: str,
    weights: str | None,
    dataset: str,
    architecture: str,
    per_eps: dict[float, dict[str, Any]],
    provenance: list[str],
    attack: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record; ``per_eps`` maps eps to the keys in ``PER_EPS`` (``reported``: the paper's own number for the
    attack it reports, its PGD; ``paper_attacks_here``: the paper's attacks on these weights, attack -> accuracy;
    None where a number does not exist). A missing or extra key is refused: a record is the schema or nothing."""
    for eps, values in per_eps.items():
        if set(values) != set(PER_EPS):
            raise ValueError(
                f"robustbench record {name} eps {eps:g}: keys {sorted(values)}, expected {sorted(PER_EPS)}"
            )
    return {
        "name": name,
        "run": run,
        "weights": weights,
        "dataset": dataset,
        "architecture": architecture,
        "threat_model": "Linf",
        "eps": {f"{e:g}": {k: per_eps[e][k] for k in PER_EPS} for e in sorted(per_eps)},
        "attack": attack,
        "provenance": list(provenance),
    }
