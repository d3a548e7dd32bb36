"""Pure numbers: the per-example worst case, Carlini-style sanity flags and the verdict.

Accuracies are in percentage points, keyed by attack name and eps; ``groups`` says what each attack is
for (``single-step``, ``paper``, ``steps``, ``adaptive``, ``black-box``, ``transfer``: configs/audit.yaml);
thresholds come from ``audit.thresholds`` in configs/audit.yaml only.
"""

from __future__ import annotations

import torch

VERDICTS = ("robustness confirmed", "robustness reduced", "artefact of gradient masking")
# Flag -> the value of a healthy (unmasked) evaluation.
HEALTHY = {
    "iterative_beats_single_step": True,
    "white_box_beats_black_box": True,
    "white_box_beats_transfer": True,
    "accuracy_reaches_zero": True,
    "more_steps_change_nothing": True,
    "paper_attack_overestimates_robustness": False,
}
# Failed flags that signal masked gradients (the others signal a weak or unconverged attack).
MASKING_FLAGS = ("iterative_beats_single_step", "white_box_beats_black_box", "white_box_beats_transfer")


def worst_case(per_attack_correct: dict[str, torch.Tensor]) -> torch.Tensor:
    """Robust only if correct under every attack (per example)."""
    return torch.stack([c.bool() for c in per_attack_correct.values()]).all(0)


def named(groups: dict[str, str], group: str) -> list[str]:
    """The attacks of one group, in order."""
    return [n for n, g in groups.items() if g.split(" ")[0] == group]


def paper_attack(groups: dict[str, str]) -> str:
    """The attack under audit: the one of group ``paper`` (the paper's PGD)."""
    found = named(groups, "paper")
    if len(found) != 1:
        raise ValueError(f"the audit needs exactly one attack of group 'paper' (the paper's PGD); got {found}")
    return found[0]


def _fmt(acc: dict[float, float], eps: list[float]) -> str:
    return "/".join(f"{acc[e]:.1f}" for e in eps)


def _beats(acc, eps, strong: list[str], weak: str, tol: float, label: str) -> tuple[bool, str]:
    ok = all(acc[s][e] <= acc[weak][e] + tol for s in strong for e in eps)
    nums = "; ".join(f"{n} {_fmt(acc[n], eps)}" for n in [weak, *strong])
    return ok, f"{label}: {nums} (% at eps {'/'.join(f'{e:g}' for e in eps)}; tolerance {tol:g} points)"


def checks(acc: dict, worst: dict, sweeps: dict, groups: dict[str, str], th: dict) -> dict[str, tuple[bool, str]]:
    """Each sanity flag (see ``HEALTHY``) with the numbers behind it: iterative beats single-step; white-box
    beats black-box and transfer; accuracy reaches 0 as eps grows; the CE step ladder agrees within
    ``tolerance``; the paper's PGD exceeds the worst case by more than ``overestimate`` points."""
    paper = paper_attack(groups)
    eps, tol, out = sorted(acc[paper]), th["tolerance"], {}
    ladder = [n for n in named(groups, "steps") if n in acc]
    single = [n for n in named(groups, "single-step") if n in acc]
    if single:
        out["iterative_beats_single_step"] = _beats(
            acc, eps, [paper, *ladder], single[0], tol, "iterative CE attacks at most FGSM's accuracy"
        )
    for flag, group in (("white_box_beats_black_box", "black-box"), ("white_box_beats_transfer", "transfer")):
        for other in [n for n in named(groups, group) if n in acc][:1]:
            out[flag] = _beats(acc, eps, [paper], other, tol, f"the paper's PGD at most {other}'s accuracy")
    if sweeps:
        ends = {n: (s["eps"][-1], s["accuracy"][-1]) for n, s in sweeps.items()}
        out["accuracy_reaches_zero"] = (
            all(a <= th["zero_accuracy"] for _, a in ends.values()),
            "largest swept eps: " + "; ".join(f"{n} {a:.1f}% at eps {e:g}" for n, (e, a) in ends.items()),
        )
    if len(ladder) > 1:
        spread = max(max(acc[n][e] for n in ladder) - min(acc[n][e] for n in ladder) for e in eps)
        out["more_steps_change_nothing"] = (
            spread <= tol,
            f"spread over {', '.join(ladder)}: {spread:.1f} points "
            f"(tolerance {tol:g}); " + "; ".join(f"{n} {_fmt(acc[n], eps)}" for n in ladder),
        )
    gap = max(acc[paper][e] - worst[e] for e in eps)
    out["paper_attack_overestimates_robustness"] = (
        gap > th["overestimate"],
        f"the paper's PGD {_fmt(acc[paper], eps)} vs worst case {_fmt(worst, eps)}: "
        f"largest gap {gap:.1f} points (threshold {th['overestimate']:g})",
    )
    return out


def verdict_evidence(
    probe: dict,
    acc: dict,
    worst: dict,
    flags: dict[str, bool],
    groups: dict[str, str],
    th: dict,
    reference: dict[float, float] | None = None,
) -> dict:
    """The numbers the verdict rests on: the largest drop from the paper's PGD-40 to the worst case (and its
    eps), the CE reference's level there, and the masking signs (probe saturation, failed sanity flags)."""
    paper = paper_attack(groups)
    e = max(sorted(acc[paper]), key=lambda v: acc[paper][v] - worst[v])
    signs = (
        [f"{100 * probe['share_zero_grad']:.1f}% of points have an all-zero float32 CE input gradient"]
        if probe["share_zero_grad"] >= th["zero_grad_share"]
        else []
    )
    if probe["share_p_y_one"] >= th["saturated_share"]:
        signs.append(f"{100 * probe['share_p_y_one']:.1f}% of points have float32 p_y == 1.0")
    signs += [f"sanity flag {k} is {v}" for k, v in flags.items() if k in MASKING_FLAGS and v != HEALTHY[k]]
    ref = None if reference is None else reference[e]
    return {
        "eps": e,
        "paper_accuracy": acc[paper][e],
        "worst_case_accuracy": worst[e],
        "drop": acc[paper][e] - worst[e],
        "reference_accuracy": ref,
        "masking_signs": signs,
        "near_reference": ref is None or worst[e] <= ref + th["near_reference"],
    }


def verdict(evidence: dict, th: dict) -> str:
    """One of ``VERDICTS``, from :func:`verdict_evidence` (d = paper PGD-40 minus worst case, in points):

    - "artefact of gradient masking": masking signs (>= ``zero_grad_share`` of points with zero CE gradients,
      >= ``saturated_share`` with p_y == 1.0, or a failed flag of ``MASKING_FLAGS``: FGSM, Square or transfer
      beating the paper's PGD) AND d > ``masking_drop`` (10) AND the worst case within ``near_reference`` (10)
      points of the CE reference (when there is one);
    - "robustness reduced": d > ``overestimate`` (5) otherwise;
    - "robustness confirmed": d <= 5.
    """
    d = evidence["drop"]
    if evidence["masking_signs"] and d > th["masking_drop"] and evidence["near_reference"]:
        return VERDICTS[2]
    return VERDICTS[1] if d > th["overestimate"] else VERDICTS[0]


def explain_verdict(evidence: dict, result: str) -> str:
    """The verdict in one paragraph, with its numbers."""
    ev = evidence
    ref = "" if ev["reference_accuracy"] is None else f"; the CE reference reaches {ev['reference_accuracy']:.1f}%"
    signs = "; ".join(ev["masking_signs"]) or "none"
    return (
        f"{result}: at eps {ev['eps']:g} the paper's PGD leaves {ev['paper_accuracy']:.1f}% accuracy and "
        f"the worst case over all attacks {ev['worst_case_accuracy']:.1f}% (drop {ev['drop']:.1f} points"
        f"{ref}). Masking signs: {signs}."
    )
