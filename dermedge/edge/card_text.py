"""A model card's external results and site calibration, as lines a person reads
(edge-classify -v, convert --inspect, dermedge card), and the external entry `dermedge card
--add-external` stores. TensorFlow-free: the edge install shows them, and both `train` (which
writes the metrics) and `convert` (whose `dermedge card` records them) may import it."""

from __future__ import annotations

from typing import Any

NONE_RECORDED = "no external evaluation recorded: internal figures only"
EXTERNAL_KIND = "dermedge.external/1"  # the `kind` of `dermedge evaluate --external`'s metrics.json


def _fmt(v: Any) -> str:
    """A number with 3 decimals; n/a for None or anything else (a card edited by hand)."""
    return "n/a" if _number(v) is None else f"{v:.3f}"


def _number(v: Any) -> float | None:
    """`v` as a float when it is a number (not a bool), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _dict(v: Any) -> dict[str, Any]:
    """`v` when it is a dict, else an empty one: a malformed entry shows as n/a, not a crash."""
    return v if isinstance(v, dict) else {}


def _text(v: Any, n: int = 40) -> str:
    """A string entry cut to `n` characters; empty for anything else."""
    return v[:n] if isinstance(v, str) else ""


def external_lines(card: dict[str, Any] | None) -> list[str]:
    """One line per recorded external evaluation (dataset: AUC, sens/spec at the card
    threshold), or the plain statement that there is none."""
    ext = _dict(_dict(card).get("external"))
    if not ext:
        return [NONE_RECORDED]
    return [
        _external_line(_dict(card), _printable(name, 60), _dict(e))
        for name, e in sorted(ext.items())
    ]


def _external_line(card: dict[str, Any], name: str, e: dict[str, Any]) -> str:
    """One external evaluation as a line; a malformed entry's fields show as n/a."""
    at = _dict(e.get("at_card_threshold"))
    ci = e.get("auc_ci95")
    lo, hi = ci if isinstance(ci, list) and len(ci) == 2 else (None, None)
    flag = "" if e.get("overlap_checked") is True else "; overlap with training data NOT checked"
    if _fmt(e.get("overlapping")) != "n/a" and e["overlapping"]:
        flag += f"; {e['overlapping']} overlapping images included"
    thr_note = ""
    ours, theirs = _number(card.get("threshold")), _number(e.get("threshold"))
    if ours is not None and theirs is not None and abs(ours - theirs) > 1e-9:
        thr_note = f" (measured at t={theirs:.4f}, not this card's)"
    return (
        f"{name}: n={_count(e.get('n'))} ({_count(e.get('positives'))} malignant), AUC "
        f"{_fmt(e.get('auc'))} [{_fmt(lo)}, {_fmt(hi)}]; at card threshold"
        f"{thr_note}: sens {_fmt(at.get('sensitivity'))}, spec "
        f"{_fmt(at.get('specificity'))} ({_text(e.get('date'), 10)}{flag})"
    )


def _printable(v: Any, n: int) -> str:
    """`v` as text of at most `n` characters, control characters (a newline) shown as ?."""
    return "".join(c if c.isprintable() else "?" for c in str(v)[:n])


def _count(v: Any) -> str:
    """An integer count, or ? for anything else."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else "?"


def _plain(v: Any) -> str:
    """A number as written in the card, or ? for anything else."""
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"


def calibration_lines(card: dict[str, Any] | None) -> list[str]:
    """The card's site calibration in two lines (threshold now and before, where, on how many
    cases), or nothing for a model used at its training threshold."""
    cal = _dict(_dict(card).get("calibration"))
    if not cal:
        return []
    counts = _dict(_dict(cal.get("data")).get("counts"))
    after = _dict(cal.get("after"))
    return [
        f"site {_text(cal.get('site'), 60)!r}: threshold {_fmt(cal.get('threshold'))} (trained "
        f"{_fmt(cal.get('original_threshold'))}), chosen for sensitivity >= "
        f"{_plain(cal.get('target_sensitivity'))} on {_count(counts.get('malignant'))} malignant + "
        f"{_count(counts.get('benign'))} benign cases ({_text(cal.get('date'), 10)}, dermedge "
        f"{_text(_dict(cal.get('tool')).get('dermedge'), 20)})",
        f"on those cases: sens {_fmt(after.get('sensitivity'))}, spec "
        f"{_fmt(after.get('specificity'))}; internal and external figures were measured at "
        "the trained threshold",
    ] + adaptation_lines(card)


def adaptation_lines(card: dict[str, Any] | None) -> list[str]:
    """One line when the card carries a site head (`calibrate --adapt`): adapted to which site,
    on how many cases, and its cross-validated AUC against the shipped model's; or one saying
    that adaptation was tried and the shipped head kept; else nothing."""
    head = _dict(_dict(card).get("head"))
    rec = _dict(head.get("record")) or _dict(
        _dict(_dict(card).get("calibration")).get("adaptation")
    )
    if not rec:
        return []
    counts = _dict(rec.get("counts"))
    ci = rec.get("cv_auc_ci95")
    lo, hi = ci if isinstance(ci, list) and len(ci) == 2 else (None, None)
    figures = (
        f"out-of-fold AUC {_fmt(rec.get('cv_auc'))} [{_fmt(lo)}, {_fmt(hi)}] vs shipped "
        f"{_fmt(rec.get('shipped_auc'))} on {_count(counts.get('malignant'))} malignant + "
        f"{_count(counts.get('benign'))} benign cases ({_text(rec.get('date'), 10)})"
    )
    if head:
        return [
            f"adapted to site {_text(head.get('site') or rec.get('site'), 60)!r}: last layer "
            f"re-fitted on the site's cases; {figures}; the model's own output is the shipped head"
        ]
    return [
        f"adaptation tried for site {_text(rec.get('site'), 60)!r}, shipped head kept: {figures}"
    ]


def card_entry(metrics: dict[str, Any], metrics_sha256: str) -> dict[str, Any]:
    """The compact summary stored under card["external"][dataset] from an external metrics.json;
    ValueError, one line, for a file that is not one."""
    if not isinstance(metrics, dict) or metrics.get("kind") != EXTERNAL_KIND:
        raise ValueError(
            "not an external evaluation's metrics.json (run `dermedge evaluate "
            "MODEL --data ROOT --external`)"
        )
    try:
        entry = _entry(metrics, metrics_sha256)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed external metrics.json: no usable {e}"[:200]) from None
    from dermedge.edge.card import check_card_types

    check_card_types({"external": {entry["dataset"]: entry}})
    if not isinstance(entry["dataset"], str) or not entry["dataset"]:
        raise ValueError("malformed external metrics.json: no dataset name")
    return entry


def _entry(metrics: dict[str, Any], metrics_sha256: str) -> dict[str, Any]:
    """card_entry's fields (KeyError/TypeError for a metrics.json that lacks one)."""
    pt = metrics["thresholds"]["card"]
    ov = metrics.get("overlap") or {}
    return {
        "dataset": metrics["dataset"],
        "n": metrics["n"],
        "positives": metrics["positives"],
        "auc": metrics["roc_auc"],
        "auc_ci95": metrics["roc_auc_ci95"],
        "at_card_threshold": {
            "sensitivity": pt["sensitivity"],
            "specificity": pt["specificity"],
            "sensitivity_ci95": pt["ci95"]["sensitivity"],
            "specificity_ci95": pt["ci95"]["specificity"],
            "tp": pt["tp"],
            "fn": pt["fn"],
            "tn": pt["tn"],
            "fp": pt["fp"],
        },
        "threshold": pt["threshold"],
        "ece": metrics.get("ece"),
        "overlap_checked": bool(ov.get("checked")),
        "overlapping": ov.get("overlapping", 0),
        "date": metrics["date"],
        "tool_version": (metrics.get("tool") or {}).get("dermedge"),
        "metrics_sha256": metrics_sha256,
    }


def add_external(card: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any] | None:
    """Store `entry` under card["external"][its dataset]; returns the entry it replaced, if any."""
    if not isinstance(card.get("external"), dict):
        card["external"] = {}
    ext = card["external"]
    old = ext.get(entry["dataset"])
    ext[entry["dataset"]] = entry
    return old
