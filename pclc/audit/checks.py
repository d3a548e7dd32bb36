"""Pure numbers: the per-example worst case, Carlini-style sanity flags and the verdict.

Accuracies are in percentage points, keyed by attack name and eps; ``groups`` says what each attack is
for (``single-step``, ``paper``, ``steps``, ``adaptive``, ``black-box``, ``transfer``: configs/audit.yaml);
thresholds come from ``audit.thresholds`` in configs/audit.yaml only.
"""

from __future__ import annotations

import torch

VERDICTS = ("robustness confirmed", "robustness reduced", "artefact of gradient masking", "no robustness")
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
    # Judged on the adaptive sweep only: its steps scale with eps, so at eps 1 it can reach every pixel. The
    # paper's PGD moves at most nb_iter x eps_iter (0.4) whatever the eps: its sweep cannot reach 0 and is shown only.
    adaptive = {n: s for n, s in sweeps.items() if n != paper}
    if adaptive:
        ends = {n: (s["eps"][-1], s["accuracy"][-1]) for n, s in sweeps.items()}
        out["accuracy_reaches_zero"] = (
            all(ends[n][1] <= th["zero_accuracy"] for n in adaptive),
            "largest swept eps: "
            + "; ".join(
                f"{n} {a:.1f}% at eps {e:g}" + (" (not judged)" if n == paper else "") for n, (e, a) in ends.items()
            ),
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
    trained_with: str | None = None,
) -> dict:
    """The numbers the verdict rests on: the largest drop from the paper's PGD-40 to the worst case (and its
    eps), the CE reference's level there, the masking signs (probe saturation, failed sanity flags), catastrophic
    overfitting (``trained_with``: the adversarial-training attack, ``fgsm`` for Table 5's grey models) and every
    signal that fired (``signals``)."""
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
    catastrophic = None
    single = [n for n in named(groups, "single-step") if n in acc]
    if trained_with == "fgsm" and single:
        ce = max(sorted(acc[paper]), key=lambda v: acc[single[0]][v] - acc[paper][v])
        gap = acc[single[0]][ce] - acc[paper][ce]
        if gap > th["catastrophic_gap"]:
            catastrophic = (
                f"catastrophic overfitting: an FGSM-trained model that {single[0]} leaves at {acc[single[0]][ce]:.1f}% "
                f"and the paper's PGD at {acc[paper][ce]:.1f}% (eps {ce:g}; gap {gap:.1f} > {th['catastrophic_gap']:g})"
            )
    worst_max = max(worst.values())
    others = [f"sanity flag {k} is {v}" for k, v in flags.items() if k not in MASKING_FLAGS and v != HEALTHY[k]]
    none = [f"the worst case is at most {worst_max:.1f}% at every eps"] if worst_max <= th["no_robustness"] else []
    return {
        "eps": e,
        "paper_accuracy": acc[paper][e],
        "worst_case_accuracy": worst[e],
        "worst_case_max": worst_max,
        "drop": acc[paper][e] - worst[e],
        "reference_accuracy": ref,
        "masking_signs": signs,
        "near_reference": ref is None or worst[e] <= ref + th["near_reference"],
        "catastrophic_overfitting": catastrophic,
        "signals": [*([catastrophic] if catastrophic else []), *none, *signs, *others],
    }


def verdict(evidence: dict, th: dict) -> str:
    """One of ``VERDICTS``, from :func:`verdict_evidence` (d = paper PGD-40 minus worst case, in points):

    - "artefact of gradient masking": masking signs (>= ``zero_grad_share`` of points with zero CE gradients,
      >= ``saturated_share`` with p_y == 1.0, or a failed flag of ``MASKING_FLAGS``: FGSM, Square or transfer
      beating the paper's PGD) AND d > ``masking_drop`` (10) AND the worst case within ``near_reference`` (10)
      points of the CE reference (when there is one);
    - "robustness reduced": d > ``overestimate`` (5) otherwise;
    - "no robustness": d <= 5, but the worst case is at most ``no_robustness`` (1) points at every eps (the paper's
      attack found ~0% too: there was nothing to confirm);
    - "robustness confirmed": d <= 5 and some robustness left.
    """
    d = evidence["drop"]
    if evidence["masking_signs"] and d > th["masking_drop"] and evidence["near_reference"]:
        return VERDICTS[2]
    if d > th["overestimate"]:
        return VERDICTS[1]
    return (
        VERDICTS[3]
        if evidence.get("worst_case_max", evidence["worst_case_accuracy"]) <= th["no_robustness"]
        else VERDICTS[0]
    )


def explain_verdict(evidence: dict, result: str) -> str:
    """The verdict in one paragraph, with its numbers."""
    ev = evidence
    ref = "" if ev["reference_accuracy"] is None else f"; the CE reference reaches {ev['reference_accuracy']:.1f}%"
    signals = "; ".join(ev.get("signals", ev["masking_signs"])) or "none"
    named_co = " — catastrophic overfitting" if ev.get("catastrophic_overfitting") else ""
    return (
        f"{result}{named_co}: at eps {ev['eps']:g} the paper's PGD leaves {ev['paper_accuracy']:.1f}% accuracy and "
        f"the worst case over all attacks {ev['worst_case_accuracy']:.1f}% (drop {ev['drop']:.1f} points"
        f"{ref}). Signals that fired: {signals}."
    )
