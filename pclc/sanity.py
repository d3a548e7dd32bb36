"""RobustBench-style warnings on one evaluation's results: signs that a model's gradients may be masked (an
iterative attack weaker than FGSM, a transferred attack stronger than the white-box one, gradient-free SPSA beating
the gradient attacks). ``pclc.evaluate`` logs them and writes them into the run's summary."""

from __future__ import annotations

from typing import Any


def sanity_warnings(results: list[dict[str, Any]], margin: float = 1.0) -> list[str]:
    """RobustBench-style warnings: signs that a model's gradients may be masked; an attack that should be at
    least as strong counts as weaker only beyond ``margin`` points (``eval.warn_margin``)."""
    warn = []
    by = {(r["source"], r["kind"], r["eps"]): r["adv_accuracy"] for r in results}
    for (src, kind, eps), acc in by.items():
        if (
            src == "white"
            and kind in ("bim", "pgd", "mim")
            and ("white", "fgsm", eps) in by
            and acc > by[("white", "fgsm", eps)] + margin
        ):
            warn.append(
                f"{kind} at eps {eps:g} ({acc:.1f}%) is weaker than FGSM ({by[('white', 'fgsm', eps)]:.1f}%): "
                "iterative attacks should be at least as strong; gradients may be masked"
            )
        if src == "transfer" and ("white", kind, eps) in by and acc < by[("white", kind, eps)] - margin:
            warn.append(
                f"transferred {kind} at eps {eps:g} ({acc:.1f}%) beats white-box {kind} "
                f"({by[('white', kind, eps)]:.1f}%): white-box gradients may be masked"
            )
    spsa = [(eps, acc) for (src, kind, eps), acc in by.items() if kind == "spsa"]
    for eps, acc in spsa:
        white = [a for (s, k, e), a in by.items() if s == "white" and k in ("pgd", "bim", "mim") and e == eps]
        if white and acc < min(white) - margin:
            warn.append(
                f"gradient-free SPSA at eps {eps:g} ({acc:.1f}%) beats gradient attacks ({min(white):.1f}%): "
                "gradients may be masked"
            )
    return warn
