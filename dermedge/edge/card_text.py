"""A model card's external results and site calibration, as lines a person reads
(edge-classify -v, convert --inspect, dermedge card). TensorFlow-free: the edge install shows them."""

from __future__ import annotations

from typing import Any

NONE_RECORDED = "no external evaluation recorded: internal figures only"


def _fmt(v: Any) -> str:
    """A number with 3 decimals, or n/a for None."""
    return "n/a" if v is None else f"{v:.3f}"


def external_lines(card: dict[str, Any] | None) -> list[str]:
    """One line per recorded external evaluation (dataset: AUC, sens/spec at the card
    threshold), or the plain statement that there is none."""
    ext = (card or {}).get("external") or {}
    if not ext:
        return [NONE_RECORDED]
    lines = []
    for name, e in sorted(ext.items()):
        at = e.get("at_card_threshold") or {}
        ci = e.get("auc_ci95") or [None, None]
        flag = "" if e.get("overlap_checked") else "; overlap with training data NOT checked"
        if e.get("overlapping"):
            flag += f"; {e['overlapping']} overlapping images included"
        thr_note = ""
        if (
            card
            and card.get("threshold") is not None
            and e.get("threshold") is not None
            and abs(float(card["threshold"]) - float(e["threshold"])) > 1e-9
        ):
            thr_note = f" (measured at t={e['threshold']:.4f}, not this card's)"
        lines.append(
            f"{name}: n={e.get('n')} ({e.get('positives')} malignant), AUC "
            f"{_fmt(e.get('auc'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]; at card threshold"
            f"{thr_note}: sens {_fmt(at.get('sensitivity'))}, spec "
            f"{_fmt(at.get('specificity'))} ({(e.get('date') or '')[:10]}{flag})"
        )
    return lines


def calibration_lines(card: dict[str, Any] | None) -> list[str]:
    """The card's site calibration in two lines (threshold now and before, where, on how many
    cases), or nothing for a model used at its training threshold."""
    cal = (card or {}).get("calibration")
    if not cal:
        return []
    counts = (cal.get("data") or {}).get("counts") or {}
    after = cal.get("after") or {}
    return [
        f"site {cal.get('site')!r}: threshold {_fmt(cal.get('threshold'))} (trained "
        f"{_fmt(cal.get('original_threshold'))}), chosen for sensitivity >= "
        f"{cal.get('target_sensitivity')} on {counts.get('malignant')} malignant + "
        f"{counts.get('benign')} benign cases ({(cal.get('date') or '')[:10]}, dermedge "
        f"{(cal.get('tool') or {}).get('dermedge')})",
        f"on those cases: sens {_fmt(after.get('sensitivity'))}, spec "
        f"{_fmt(after.get('specificity'))}; internal and external figures were measured at "
        "the trained threshold",
    ]
