"""Robustness audit: do the paper's robustness numbers survive stronger, adaptive attacks?

PC+LC pushes p_y towards 1 (probability margin 0.995). In float32 softmax then rounds p_y to exactly 1
and the cross-entropy input gradient can underflow to zero, so the paper's CE-based attacks may fail
for lack of a gradient rather than for lack of adversarial examples: gradient masking (Athalye et al.
2018; Carlini et al. 2019). At each eps of the dataset's grid the audit runs a saturation probe, FGSM
and the paper's PGD-40 (the claims under audit), the CE-PGD step ladder, the adaptive attacks (margin
and temperature PGD, APGD-CE/DLR, targeted APGD: as a cascade on survivors, as AutoAttack does), the
black-box Square attack and PGD transferred from the CE model; then eps sweeps until accuracy reaches 0,
a per-example worst case, Carlini-style sanity flags and a verdict. An example counts as robust under
an attack when the model classifies it correctly both clean and attacked (AutoAttack's rule).

- :mod:`pclc.audit.run`: the attacks (``audit.attacks`` in configs/audit.yaml), the per-example cache
  (``runs/<key>/audit/``), the cascade, sweeps, the probe and one model's :class:`AuditResult`;
- :mod:`pclc.audit.checks`: worst case, flags and verdict: pure numbers (thresholds from the YAML);
- :mod:`pclc.audit.report`: ``audit.md``, ``audit.csv`` and ``audit_eps.png``;
- :mod:`pclc.audit.cli`: ``python -m pclc.audit`` (one run and its CE reference).
"""

from pclc.analysis.saturation import saturation_probe
from pclc.audit.checks import HEALTHY, MASKING_FLAGS, VERDICTS, checks, verdict, verdict_evidence, worst_case
from pclc.audit.cli import audit, audit_settings
from pclc.audit.report import CSV_COLUMNS, paper_rows, write_audit_report
from pclc.audit.result import AuditResult
from pclc.audit.run import CASCADE, attack_specs, audit_model, audit_run, method_of

__all__ = [
    "AuditResult",
    "CASCADE",
    "CSV_COLUMNS",
    "HEALTHY",
    "MASKING_FLAGS",
    "VERDICTS",
    "attack_specs",
    "audit",
    "audit_model",
    "audit_run",
    "audit_settings",
    "checks",
    "method_of",
    "paper_rows",
    "saturation_probe",
    "verdict",
    "verdict_evidence",
    "worst_case",
    "write_audit_report",
]
