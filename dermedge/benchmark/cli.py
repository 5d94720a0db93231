"""The `dermedge benchmark` command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dermedge import DISCLAIMER

if TYPE_CHECKING:
    from dermedge.benchmark.core import Settings

# options passed to Settings unchanged (the others are parsed or checked first)
_SETTINGS_AS_GIVEN = ("runs", "warmup", "block", "data", "limit", "batch", "include_rejected")


def _ints(value: str) -> list[int]:
    """Comma-separated thread counts as ints; click.BadParameter unless some, all >= 1."""
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from e
    if not out or min(out) < 1:
        raise click.BadParameter("thread counts must be >= 1")
    return out


@click.command("benchmark", epilog=DISCLAIMER)
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--threads", default="1,2,4", show_default=True, help="Thread counts, comma-separated."
)
@click.option(
    "--runs", default=100, show_default=True, help="Timed single-image runs per variant x threads."
)
@click.option("--warmup", default=10, show_default=True, help="Untimed runs first.")
@click.option(
    "--block",
    default=1,
    show_default=True,
    help="Runs per turn in the round-robin over variants (1: A B C A B C ...).",
)
@click.option(
    "--runtime",
    "runtimes",
    default="keras,tflite,onnx",
    show_default=True,
    help="Which runtimes: keras (TensorFlow), tflite (edge runtime), onnx (ONNX Runtime).",
)
@click.option(
    "--variant",
    "variants",
    default=None,
    help="Only these variants, e.g. tflite-int8,keras (default: all found).",
)
@click.option(
    "--data",
    default=None,
    help="Test data instead of the run's test split: a manifest.csv / run folder, or a dataset folder.",
)
@click.option("--limit", type=int, default=None, help="At most this many test images (stratified).")
@click.option("--batch", default=16, show_default=True, help="Batch size of the accuracy pass.")
@click.option(
    "--camera-source",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Also benchmark the camera loop on this video (frames/s, time per stage).",
)
@click.option("--frames", default=300, show_default=True, help="Camera frames to process at most.")
@click.option(
    "--camera-variant",
    default=None,
    help="Variant for the camera loop (default tflite-int8 of the first model).",
)
@click.option(
    "--name", default=None, help="Output folder name under runs/benchmark/ (default exp, exp2...)."
)
@click.option("--exist-ok", is_flag=True, help="Overwrite an existing runs/benchmark/<name>.")
@click.option(
    "--include-rejected",
    is_flag=True,
    help="Also benchmark variants the converter's accuracy gate refused (rejected/).",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def benchmark(sources: tuple[Path, ...], **opts: Any) -> None:
    """Latency vs accuracy of every variant of SOURCES (train runs, convert runs, folders of
    .tflite files, or model files) under each runtime and thread count.

    \b
    dermedge benchmark runs/train/lite0-isic runs/train/simple-isic --threads 1,2
    dermedge benchmark runs/convert/lite0-isic --runtime tflite      # edge install: no TF
    dermedge benchmark model_int8.tflite --data DATA --camera-source clip.mp4

    Writes runs/benchmark/<name>/: results.csv, results.json (with the machine's facts),
    results.md and pareto.png / latency.png, and prints the table.
    """
    from dermedge.runs import new_run_dir

    settings = _settings(opts)
    try:
        out = new_run_dir("benchmark", opts["name"], exist_ok=opts["exist_ok"])
    except FileExistsError as e:
        raise click.ClickException(str(e)) from e
    try:
        results = _measure(sources, out, settings, opts)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    _report(results, out, plots=not opts["no_plots"])


def _runtimes(value: str) -> tuple[str, ...]:
    """The --runtime names, each checked against the known runtimes."""
    from dermedge.benchmark import core

    wanted = tuple(r.strip() for r in value.split(",") if r.strip())
    unknown = set(wanted) - set(core.RUNTIMES)
    if unknown:
        raise click.BadParameter(
            f"unknown runtime(s) {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(core.RUNTIMES)}",
            param_hint="--runtime",
        )
    return wanted


def _settings(opts: dict[str, Any]) -> Settings:
    """The benchmark settings the command-line options ask for, after checking them."""
    from dermedge.benchmark import core

    wanted = _runtimes(opts["runtimes"])
    if opts["runs"] < 1 or opts["warmup"] < 0 or opts["block"] < 1:
        raise click.BadParameter("--runs and --block must be >= 1, --warmup >= 0")
    variants = opts["variants"]
    return core.Settings(
        threads=_ints(opts["threads"]),
        runtimes=wanted,
        variants=tuple(v.strip() for v in variants.split(",")) if variants else None,
        **{k: opts[k] for k in _SETTINGS_AS_GIVEN},
    )


def _measure(
    sources: tuple[Path, ...], out: Path, settings: Settings, opts: dict[str, Any]
) -> dict[str, Any]:
    """Run the benchmark, and the camera loop when --camera-source names a video."""
    from dermedge.benchmark import core

    results = core.run([str(s) for s in sources], out, settings)
    if opts["camera_source"] is not None:
        from dermedge.benchmark.camera import camera_benchmark

        results["camera"] = camera_benchmark(
            results, opts["camera_source"], opts["frames"], settings, opts["camera_variant"]
        )
    return results


def _report(results: dict[str, Any], out: Path, plots: bool) -> None:
    """Write the result files and print the table, camera summary, notes and where they went."""
    from dermedge.benchmark import report

    paths = report.write(results, out, plots=plots)
    click.echo(report.table(results["rows"]))
    if results.get("camera"):
        click.echo("\n" + report.camera_markdown(results["camera"]))
    for n in results["notes"]:
        click.echo(f"note: {n}", err=True)
    click.echo(f"\nresults: {out}/ ({', '.join(p.name for p in paths.values())})", err=True)
