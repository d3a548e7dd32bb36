"""What the audit finds for one model (the report reads these fields; ``asdict`` is its JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class AuditResult:
    """One model's audit. Accuracies in %, keyed ``"<eps:g>"``; ``accuracy[attack][eps]``."""

    n: int  # test examples audited
    subset: int | None  # class-balanced subset size, None = the full test set
    eps: list[float]
    clean_accuracy: float
    probe: dict[str, Any]  # float32 saturation: shares with p_y == 1 and zero CE gradient, margins
    accuracy: dict[str, dict[str, float]]
    groups: dict[str, str]  # attack -> what it is for (configs/audit.yaml), "(cascade)" marked
    cascade: list[str]  # the adaptive attacks run on survivors, in order
    cascade_counts: dict[str, dict[str, list[int]]]  # attack -> eps -> [attacked, broken]
    worst_case: dict[str, float]
    strongest_adaptive: str | None  # None: the standalone attacks left nothing to break
    sweeps: dict[str, dict[str, list[float]]]  # attack -> {"eps": [...], "accuracy": [...]}
    flags: dict[str, bool]
    flag_notes: dict[str, str]
    evidence: dict[str, Any]
    verdict: str
    verdict_reason: str
    reference: dict[str, float] | None  # the CE reference's accuracy per eps
    transfer_source: str | None
    profile: dict[str, Any]  # the budgets used (audit.profile and audit.attacks)
    thresholds: dict[str, float]
    provenance: dict[str, Any]
    run: str | None = None
    dataset: str | None = None
    model: str | None = None
    loss: str | None = None
    method: str | None = None  # the paper's name: loss, +at when adversarially trained
    reference_run: str | None = None
    # eps -> indicator -> share of examples (pclc.audit.indicators)
    indicators: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def paper_key(self) -> tuple:
        """(dataset, model, method): where the paper's numbers for this model are."""
        return self.dataset, self.model, self.method or self.loss

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
