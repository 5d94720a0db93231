"""`dermedge card MODEL`: show a model card, or record an external evaluation in it.

MODEL is a .tflite (the card embedded in its metadata), a run folder or its `model_card.json`
(which `dermedge convert` copies into every variant it embeds, external results included).
TensorFlow-free, and free of `train` (convert never imports it): the external entry is built
by `dermedge.edge.card_text.card_entry`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click

from dermedge.edge.card_text import add_external, calibration_lines, card_entry, external_lines


class CardError(click.ClickException):
    """The card cannot be shown or updated (no such file, bad card or metrics); exit code 2."""

    exit_code = 2


def warn(msg: str) -> None:
    """A loud warning on stderr."""
    click.secho(f"WARNING: {msg}", fg="yellow", bold=True, err=True)


def _obj(v: Any) -> dict[str, Any]:
    """`v` when it is a dict, else an empty one (a hand-edited entry shows as n/a, not a crash)."""
    return v if isinstance(v, dict) else {}


def _fmt(v: Any) -> str:
    """n/a for None, a float with 4 decimals, anything else as str."""
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def load_card(target: str, allow_unsealed: bool = False) -> tuple[dict[str, Any], Path, str]:
    """(card, file holding it, "tflite" or "json") of a .tflite, a run folder or a card JSON;
    CardError, one line, for a missing file, a card readers would refuse, or (unless
    `allow_unsealed`) a .tflite whose card records no readable file digest."""
    from dermedge.edge.card import check_card_types, read_card, unsealed_warning

    p = Path(target)
    if p.is_dir():
        p = p / "model_card.json"
    if not p.is_file():
        raise CardError(f"{target}: no such .tflite, run folder with model_card.json, or card")
    try:
        if p.suffix == ".tflite":
            card = read_card(p, allow_unsealed)
            kind = "tflite"
        else:
            card = json.loads(p.read_text(encoding="utf-8"))
            kind = "json"
        if isinstance(card, dict):
            check_card_types(card)
    except (ValueError, OSError, RecursionError) as e:
        raise CardError(f"{p}: {(str(e).splitlines() or [type(e).__name__])[0]}"[:300]) from e
    if not isinstance(card, dict):
        raise CardError(f"{p} has no dermedge model card")
    if kind == "tflite" and allow_unsealed and not card.get("file_sha256"):
        warn(unsealed_warning(p))
    return card, p, kind


def save_card(card: dict[str, Any], src: Path, kind: str, out: Path) -> None:
    """Write the card atomically: re-embedded into the .tflite (checked), or as JSON."""
    from dermedge.data.io import atomic_write_bytes, atomic_write_text

    if kind == "json":
        atomic_write_text(out, json.dumps(card, indent=2, allow_nan=False) + "\n")
        return
    from dermedge.edge.card import embed_card

    try:
        data = embed_card(src.read_bytes(), card)  # read back and checked there
    except ValueError as e:
        raise CardError(f"{src}: {e}"[:300]) from e
    atomic_write_bytes(out, data)


def _check_match(card: dict[str, Any], metrics: dict[str, Any], force: bool) -> None:
    """Refuse metrics measured at another threshold than this card's (unless --force)."""
    measured = metrics["thresholds"]["card"]
    thr = card.get("threshold")
    why = None
    if measured.get("from") != "card":
        why = f"measured at --threshold {measured['threshold']:.4f}, not at a card's threshold"
    elif thr is not None and abs(float(thr) - float(measured["threshold"])) > 1e-9:
        why = (
            f"measured at threshold {measured['threshold']:.4f}, but this card's is "
            f"{float(thr):.4f}: its sensitivity/specificity do not describe this model"
        )
    if why and not force:
        raise CardError(f"refusing: the metrics were {why}; pass --force to store them anyway")
    if why:
        warn(f"--force: storing metrics {why}")
    name = _obj(metrics.get("model_card")).get("name")
    if name and card.get("name") and name != card["name"]:
        warn(f"the metrics are of model {name!r}, this card is {card['name']!r}")


def summary_lines(card: dict[str, Any]) -> list[str]:
    """The card in a few lines: model, contract, threshold, internal figures, external results."""
    inp = _obj(card.get("input"))
    lines = [
        f"model     {card.get('name')} ({card.get('arch')}), quantization "
        f"{card.get('quantization', 'none (Keras)')}, created {card.get('created')}",
        f"input     {inp.get('size')}px, crop {inp.get('crop')}"
        + (f", margin {inp['margin']} (edge pixels around it)" if inp.get("margin") else ""),
        f"threshold {_fmt(card.get('threshold'))} -> refer (P(malignant) >= threshold), "
        f"policy {json.dumps(card.get('threshold_policy') or {})}",
    ]
    test = _obj(_obj(card.get("metrics")).get("test"))
    if test:
        lines.append(
            f"internal  test split n={test.get('n')}: AUC {_fmt(test.get('roc_auc'))}, "
            f"sens {_fmt(test.get('recall'))}, spec {_fmt(test.get('specificity'))}"
        )
    gate = _obj(card.get("gate"))
    if gate:
        m = _obj(gate.get("metrics"))
        lines.append(
            f"gate      {gate.get('verdict')} on {gate.get('test_images')} test images: "
            f"AUC {_fmt(m.get('auc'))}, sens {_fmt(m.get('sensitivity'))}, "
            f"spec {_fmt(m.get('specificity'))}"
        )
    lines += [f"{'site' if i == 0 else '':<9} {x}" for i, x in enumerate(calibration_lines(card))]
    ext = external_lines(card)
    lines += [f"{'external' if i == 0 else '':<9} {x}" for i, x in enumerate(ext)]
    return lines


@click.command("card")
@click.argument("target", metavar="MODEL")
@click.option(
    "--add-external",
    "metrics_path",
    metavar="METRICS.json",
    type=click.Path(dir_okay=False),
    help="Store this external evaluation's summary under card['external'][dataset].",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="Write the updated model here [default: rewrite MODEL in place, atomically].",
)
@click.option("--force", is_flag=True, help="Store metrics measured at another threshold.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole card as JSON.")
@click.option(
    "--allow-unsealed",
    is_flag=True,
    help="Read a .tflite whose card records no readable file digest (damaged or hand-edited).",
)
def card(
    target: str,
    metrics_path: str | None,
    out: str | None,
    force: bool,
    as_json: bool,
    allow_unsealed: bool,
) -> None:
    """Show a model card (a .tflite, a run folder or model_card.json), incl. its external
    evaluations; with --add-external, record one (from `dermedge evaluate --external`)."""
    c, src, kind = load_card(target, allow_unsealed)
    shown = src
    if out and not metrics_path:
        raise click.UsageError("--out: only with --add-external")
    if metrics_path:
        raw = Path(metrics_path).read_bytes() if Path(metrics_path).is_file() else None
        if raw is None:
            raise CardError(f"--add-external {metrics_path}: no such file")
        try:
            metrics = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise CardError(f"--add-external {metrics_path}: not JSON ({e})"[:300]) from e
        try:
            entry = card_entry(metrics, hashlib.sha256(raw).hexdigest())
        except ValueError as e:
            raise CardError(f"--add-external {metrics_path}: {e}"[:300]) from e
        _check_match(c, metrics, force)
        old = add_external(c, entry)
        dest = shown = Path(out) if out else src
        save_card(c, src, kind, dest)
        if old is not None:
            click.echo(
                f"replaced the external entry for {entry['dataset']} (was AUC "
                f"{_fmt(old.get('auc'))}, {old.get('date')})"
            )
        click.echo(f"recorded external evaluation {entry['dataset']} in {dest}")
    if as_json:
        click.echo(json.dumps(c, indent=2))
        return
    click.echo(f"card of {shown}")
    click.echo("\n".join(summary_lines(c)))
