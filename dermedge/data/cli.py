"""`dermedge data`: inspect a dataset for problems and write a leakage-free split manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from dermedge.data.analysis import Analysis, analyse, link_name, shortcut_audit, summary
from dermedge.data.index import MISSING_IMAGE, read_dataset
from dermedge.data.io import atomic_write_text
from dermedge.data.manifest import ManifestError, read_manifest
from dermedge.data.recipe import RecipeError, read_recipe, recipe_split
from dermedge.data.split import MODES, Split, extend_split, make_split, write_manifest
from dermedge.runs import format_table, new_run_dir


def _load(root: str, link: str | None, source_by: str | None = None) -> Analysis:
    """The analysed dataset (lesion ids linked from `link`); ClickException if unusable."""
    try:
        index = read_dataset(root, source_by)
        other = read_dataset(link) if link else None
    except (FileNotFoundError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    except csv.Error as e:  # e.g. a field over the csv module's 131072-character limit
        raise click.ClickException(f"{root}: a CSV file there cannot be read: {e}") from e
    for ix in (index, other):
        if ix is not None and not ix.records:
            shown = "; ".join(f"{p.path}: {p.reason}" for p in ix.problems[:3])
            raise click.ClickException(
                f"{ix.root}: no usable labelled images"
                + (f" ({len(ix.problems)} skipped: {shown} ...)" if shown else "")
            )
    return analyse(index, link=other)


def _audit_text(audit: dict[str, Any]) -> list[str]:
    """The shortcut audit as lines: label balance per source / linked part / split, warnings."""
    parts = audit["sources"] + audit["sub_sources"] + audit["source_splits"]
    rows = [
        [
            p["name"],
            p["benign"],
            p["malignant"],
            p["images"],
            f"{100 * p['malignant'] / max(1, p['images']):.1f}%",
        ]
        for p in parts
    ]
    rule = audit["rule"]
    return [
        f"label balance per source (shortcut audit: warns at >= {rule['max_share']:.0%} one "
        f"class with >= {rule['min_images']} images):",
        format_table(rows, ["source", "benign", "malignant", "total", "malignant %"]),
        *audit["warnings"],
    ]


def _leakage_text(leaks: dict[str, Any]) -> list[str]:
    """One line per split pair: how many later-split images have a twin earlier, and why."""
    lines = []
    for pair, v in leaks.items():
        a, b = pair.split("/")
        n, g = v[f"images_in_{b}_with_twin_in_{a}"], v["shared_groups"]
        why = (
            f"; {v['same_photo']} same photo, {v['same_lesion_id']} same lesion id"
            if "same_photo" in v
            else ""
        )
        lines.append(
            f"LEAKAGE {pair}: {n} {b} images have a same-lesion twin in {a} ({g} lesions{why})"
            if n
            else f"no leakage between {a} and {b}"
        )
    return lines


def _report_text(s: dict[str, Any]) -> str:
    """The dataset summary as text: counts, duplicates, links, audit, leakage and problems."""
    rows = [
        [split, c.get("benign", 0), c.get("malignant", 0), sum(c.values())]
        for split, c in s["counts"].items()
    ]
    lines = [
        f"dataset {s['root']} ({s['layout']}): {s['images']} readable images, "
        f"{s['groups']} lesion groups",
        format_table(rows, ["split", "benign", "malignant", "total"]),
        f"image sizes: {', '.join(f'{k} x{v}' for k, v in s['image_sizes'].items())}",
        f"exact duplicates: {s['exact_duplicate_sets']} sets "
        f"({s['exact_duplicate_extra_files']} extra files)",
        f"near-duplicates ({s['near_duplicate_rule']}): {s['near_duplicate_pairs']} pairs",
    ]
    if s["linked_to"]:
        lines.append(
            f"linked to lesion ids of {s['linked_to']}: {s['linked_images']} images matched"
        )
        for d in s["link_label_disagreements"]:
            lines.append(
                f"DOUBTFUL LABEL {d['path']}: {d['label']} here, {d['linked_label']} "
                f"({d['linked_dx']}) in {d['linked_path']}"
            )
    lines.append(f"lesions with conflicting labels: {s['label_conflict_groups']}")
    lines += _audit_text(s["shortcut_audit"])
    lines += _leakage_text(s["leakage"])
    for p in s["notes"]:
        lines.append(f"note {p['path']}: {p['reason']}")
    for p in s["problems"][:20]:
        lines.append(f"skipped {p['path']}: {p['reason']}")
    if len(s["problems"]) > 20:
        lines.append(f"... and {len(s['problems']) - 20} more skipped (see the JSON report)")
    return "\n".join(lines)


SOURCE_BY_HELP = (
    "Name each image's source by this metadata column (HAM10000: dataset -> "
    "ham10000:vidir_molemax, ...), so balance, thresholds and the shortcut audit see sub-sources."
)


def with_missing(s: dict[str, Any]) -> dict[str, Any]:
    """The summary with `missing_images`: CSV rows whose image file is absent, counted and listed."""
    rows = [p for p in s["problems"] if p["reason"] == MISSING_IMAGE]
    s["missing_images"] = {"count": len(rows), "rows": [p["path"] for p in rows]}
    return s


@click.group("data")
def data() -> None:
    """Read datasets, find duplicates and leakage, write split manifests."""


@data.command("inspect")
@click.argument("root", type=click.Path(file_okay=False))
@click.option(
    "--link",
    type=click.Path(file_okay=False),
    help="Borrow lesion ids from this dataset (e.g. HAM10000) through near-identical photos.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    help="Write the full report as JSON here.",
)
@click.option("--source-by", metavar="COLUMN", help=SOURCE_BY_HELP)
def inspect_cmd(root: str, link: str | None, json_out: str | None, source_by: str | None) -> None:
    """Counts per class and split, image sizes, duplicates, label balance per source (shortcuts),
    cross-split leakage (every leaking image named in --json), unreadable files, CSV rows whose
    image is absent (counted; listed in --json)."""
    s = with_missing(summary(_load(root, link, source_by)))
    click.echo(_report_text(s))
    if s["missing_images"]["count"]:
        click.echo(f"CSV rows whose image is absent: {s['missing_images']['count']}")
    if json_out:
        atomic_write_text(json_out, json.dumps(s, indent=2))
        click.echo(f"report written to {json_out}")


@data.command("split")
@click.argument("root", required=False, type=click.Path(file_okay=False))
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False),
    help="A data file (TOML or JSON) naming several datasets and their roles (split, train, "
    "link, external): one grouped, de-duplicated split of all of them (instead of ROOT).",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    help="--recipe: where its relative dataset paths are [default: $DERMEDGE_DATA, else the "
    "recipe's folder].",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="resplit",
    show_default=True,
    help="resplit: pool everything and split leakage-free; given: keep the dataset's test split; given-purged: keep it and drop train images of test lesions.",
)
@click.option("--val", default=0.15, show_default=True, help="Validation fraction.")
@click.option("--test", default=0.15, show_default=True, help="Test fraction (resplit).")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--link",
    type=click.Path(file_okay=False),
    help="Borrow lesion ids from this dataset through near-identical photos.",
)
@click.option(
    "--extend",
    type=click.Path(file_okay=False),
    help="Add ROOT's images to this manifest's train split only (val/test unchanged, their lesions excluded).",
)
@click.option(
    "--own-splits",
    is_flag=True,
    help="With --extend: split ROOT's images into train/val/test of their own (grouped) instead of train only.",
)
@click.option("--source-by", metavar="COLUMN", help=SOURCE_BY_HELP)
@click.option("--name", help="Run name under runs/data/ (default exp, exp2, ...).")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Write the manifest into this folder instead."
)
def split_cmd(
    root: str | None,
    recipe: str | None,
    data_root: str | None,
    mode: str,
    val: float,
    test: float,
    seed: int,
    link: str | None,
    extend: str | None,
    own_splits: bool,
    source_by: str | None,
    name: str | None,
    out: str | None,
) -> None:
    """Write a seeded, stratified, grouped train/val/test manifest (no lesion in two splits)."""
    if (root is None) == (recipe is None):
        raise click.UsageError("give a dataset ROOT or --recipe FILE (one of the two)")
    if recipe is not None:
        ctx = click.get_current_context()
        given = [
            k
            for k in ("mode", "val", "test", "seed")
            if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE
        ]
        if link or extend or own_splits or source_by or given:
            raise click.UsageError(
                "--recipe names its datasets, links, sources, modes, fractions and seed itself"
            )
        _split_recipe(recipe, data_root, name, out)
        return
    assert root is not None
    analysis = _load(root, link, source_by)
    linked, other = analysis.linked_paths, link_name(analysis)
    try:
        if extend:
            split, analysis = extend_split(
                read_manifest(extend), analysis, own_splits, val, test, seed
            )
            mode = split.mode
        elif own_splits:
            raise ValueError("--own-splits needs --extend BASE")
        else:
            split = make_split(analysis, mode=mode, val=val, test=test, seed=seed)
    except (ValueError, ManifestError) as e:
        raise click.ClickException(str(e)) from e
    out_dir = Path(out) if out else new_run_dir("data", name, exist_ok=True)
    csv_path = write_manifest(split, analysis, out_dir)
    s = with_missing(summary(analysis))
    s["shortcut_audit"] = shortcut_audit(split.records, linked, other, by_split=True)
    atomic_write_text(out_dir / "inspect.json", json.dumps(s, indent=2))
    _echo_split(split, s["shortcut_audit"], out_dir)
    click.echo(f"manifest: {csv_path}")


def _echo_split(split: Split, audit: dict[str, Any], out_dir: Path) -> None:
    """Print the split's counts, the shortcut audit and the cross-split twins left."""
    rows = [
        [k, c.get("benign", 0), c.get("malignant", 0), sum(c.values())]
        for k, c in split.counts().items()
    ]
    click.echo(format_table(rows, ["split", "benign", "malignant", "total"]))
    click.echo("\n".join(_audit_text(audit)))
    meta = json.loads((out_dir / "manifest.json").read_text())
    leaks = {k: list(v.values())[0] for k, v in meta["leakage"].items()}
    click.echo(
        f"mode {split.mode}, seed {split.seed}; left out {len(split.dropped)} images "
        f"(duplicates / doubtful labels / purged); cross-split twins: {leaks}"
    )


def _split_recipe(recipe: str, data_root: str | None, name: str | None, out: str | None) -> None:
    """`data split --recipe`: pool the recipe's datasets, split, write, print the audit."""
    try:
        spec = read_recipe(recipe, data_root)
        split, analysis, report = recipe_split(spec)
    except RecipeError as e:
        raise click.ClickException(str(e)) from e
    except csv.Error as e:
        raise click.ClickException(f"{recipe}: a dataset's CSV cannot be read: {e}") from e
    out_dir = Path(out) if out else new_run_dir("data", name or spec.name, exist_ok=True)
    csv_path = write_manifest(split, analysis, out_dir, extra=report)
    audit = shortcut_audit(split.records, by_split=True)
    inspect = {
        **report,
        "shortcut_audit": audit,
        "problems": [p.__dict__ for p in analysis.problems],
    }
    atomic_write_text(out_dir / "inspect.json", json.dumps(inspect, indent=2))
    _echo_split(split, audit, out_dir)
    for d in report["datasets"]:
        click.echo(
            f"{d['name']}: {d['role']}{' ' + d['mode'] if d['role'] == 'split' else ''}, "
            f"{d['images_read']} images read, {d['missing_images']} CSV rows without an image"
        )
    for why, n in report["dropped_by_reason"].items():
        click.echo(f"left out {n}: {why}")
    if report["external_overlap"]:
        click.echo(f"overlap with external sets (left out): {report['external_overlap']}")
    click.echo(f"manifest: {csv_path}")
