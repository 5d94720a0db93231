"""`dermedge convert`: TFLite variants behind an accuracy gate, and `--inspect` for any .tflite."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from dermedge.convert import VARIANTS, ConvertError, parse_quant
from dermedge.edge.runtime import EdgeError
from dermedge.metrics import THRESHOLD_POOLS

if TYPE_CHECKING:
    from dermedge.convert import pipeline

EXIT_GATE_FAILED = 3
# gate.Tolerances' fields, in order, as command-line option names
_TOLERANCES = ("max_auc_drop", "max_acc_drop", "max_sens_drop", "min_agreement")
# options passed to pipeline.Options unchanged
_OPTIONS_AS_GIVEN = (
    "calib_images",
    "allow_float_fallback",
    "data",
    "card",
    "out",
    "threads",
    "seed",
    "rethreshold",
    "margin",
    "threshold_pool",
)


@click.command("convert")
@click.argument("run_or_model", required=False, metavar="RUN_OR_MODEL")
@click.option(
    "--quant",
    default="all",
    show_default=True,
    help=f"Variants, comma-separated: {', '.join(VARIANTS)} or all.",
)
@click.option(
    "--io",
    "io_type",
    type=click.Choice(["uint8", "int8"]),
    default="uint8",
    show_default=True,
    help="int8 variant's input/output type.",
)
@click.option(
    "--calib-images",
    default=300,
    show_default=True,
    type=click.IntRange(1),
    help="Calibration images for int8, a stratified sample of the TRAINING split.",
)
@click.option(
    "--max-auc-drop",
    default=0.01,
    show_default=True,
    type=float,
    help="Gate: allowed ROC AUC drop vs Keras.",
)
@click.option(
    "--max-acc-drop",
    default=0.01,
    show_default=True,
    type=float,
    help="Gate: allowed accuracy drop (0.01 = 1 point).",
)
@click.option(
    "--max-sens-drop",
    default=0.01,
    show_default=True,
    type=float,
    help="Gate: allowed sensitivity drop.",
)
@click.option(
    "--min-agreement",
    default=0.98,
    show_default=True,
    type=float,
    help="Gate: minimum share of refer/routine decisions equal to Keras'.",
)
@click.option(
    "--allow-float-fallback",
    is_flag=True,
    help="Let int8 keep ops without an int8 kernel in float.",
)
@click.option(
    "--data", type=click.Path(), help="Split manifest (CSV or folder) instead of the run's own."
)
@click.option(
    "--card",
    type=click.Path(dir_okay=False),
    help="Model card JSON instead of the run's model_card.json.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output folder (default runs/convert/<run name>).",
)
@click.option(
    "--rethreshold/--keep-threshold",
    default=True,
    show_default=True,
    help="Re-choose each variant's operating threshold on the validation split with the card's "
    "policy (target sensitivity), through the edge runtime, instead of reusing Keras' threshold.",
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 1),
    help="Serve with this input margin (a share of the side added around every photo, edge "
    "pixels repeated; the card's contract.margin) instead of the trained one; the threshold "
    "is chosen again on val.",
)
@click.option(
    "--threshold-pool",
    type=click.Choice(THRESHOLD_POOLS),
    help="Choose the threshold with this pool instead of the trained card's (chosen again on val).",
)
@click.option("--threads", type=click.IntRange(1), help="Edge runtime threads for the gate.")
@click.option("--seed", default=0, show_default=True, help="Calibration sample seed.")
@click.option(
    "--inspect",
    "inspect_path",
    type=click.Path(),
    metavar="FILE.tflite",
    help="Print what a .tflite holds (I/O, quantization, ops, size, card) and exit.",
)
@click.option("--json", "as_json", is_flag=True, help="With --inspect: print JSON.")
@click.option(
    "--add-guard",
    "guard_path",
    type=click.Path(dir_okay=False),
    metavar="FILE.tflite",
    help="Give a converted model its unfamiliar-input guard, fitted on --data's train split "
    "(cut-off: 95% of val passes); writes --out/FILE.tflite and guard.json.",
)
@click.option(
    "--no-guard",
    is_flag=True,
    help="Do not give the converted models their unfamiliar-input guard.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --add-guard: fit on a split other than the one the card records.",
)
def convert(run_or_model: str | None, **opts: Any) -> None:
    """Convert a trained model to TFLite (fp32, fp16, dynamic, int8) behind an accuracy gate.

    \b
    Every variant is evaluated on the run's test split through the edge runtime and compared
    with the Keras model; a variant outside the tolerances is kept only under rejected/.
    The model card (contract, threshold, gate metrics...) is embedded in each .tflite.
    Exit status: 0 all passed, 1 bad input or error, 3 the gate rejected a variant.

    \b
    dermedge convert runs/train/lite0-isic --quant all
    dermedge convert --inspect runs/convert/lite0-isic/model_int8.tflite
    """
    try:
        if opts["inspect_path"]:
            _inspect(opts["inspect_path"], opts["as_json"])
        elif opts["guard_path"]:
            _add_guard(opts["guard_path"], opts["data"], opts["out"], opts["seed"], opts["force"])
        elif not run_or_model:
            raise ConvertError(
                "give a training run folder or a .keras model (or --inspect FILE.tflite)"
            )
        else:
            _convert(run_or_model, opts)
    except ConvertError as e:
        raise click.ClickException(str(e)) from None
    except (ValueError, EdgeError) as e:  # a card or model file the edge code refuses
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a full disk, a read-only or missing folder...
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        raise click.ClickException(f"cannot write or read{where}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; nothing was written") from None


def _add_guard(path: str, data: str | None, out: str | None, seed: int, force: bool) -> None:
    """`--add-guard`: fit the guard on `data`'s split, write the guarded model, print the fit."""
    from pathlib import Path

    from dermedge.convert.guard import add_guard
    from dermedge.runs import format_table, runs_root

    if not data:
        raise ConvertError("--add-guard needs --data: the split manifest the model was trained on")
    folder = Path(out) if out else runs_root() / "convert" / f"{Path(path).stem}-guard"
    s = add_guard(path, data, folder, seed=seed, force=force)
    rows = [[k, v] for k, v in s.items()]
    click.echo(format_table(rows, ["guard", "value"]))


def _inspect(path: str, as_json: bool) -> None:
    """`--inspect`: print what a .tflite holds, as text or JSON."""
    from dermedge.convert.inspect import format_inspect, inspect_file

    info = inspect_file(path)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspect(info))


def _convert(arg: str, opts: dict[str, Any]) -> None:
    """Convert and gate `arg` with the command's options; print the report and any failures."""
    from dermedge import DISCLAIMER
    from dermedge.convert import pipeline

    res = pipeline.run(arg, _pipeline_options(opts))
    click.echo(res.markdown)
    click.echo(
        f"written to {res.out_dir}/ (report.md, report.json"
        + (", rejected/" if (res.out_dir / "rejected").is_dir() else "")
        + ")"
    )
    click.echo(DISCLAIMER)
    if not res.passed:
        _echo_gate_failures(res)
        click.get_current_context().exit(EXIT_GATE_FAILED)


def _pipeline_options(opts: dict[str, Any]) -> pipeline.Options:
    """The conversion options the command line asks for (gate tolerances checked first)."""
    from dermedge.convert import gate, pipeline

    try:
        tol = gate.Tolerances(*(opts[k] for k in _TOLERANCES))
    except ValueError as e:
        raise ConvertError(str(e)) from None
    return pipeline.Options(
        quant=parse_quant(opts["quant"]),
        io=opts["io_type"],
        tolerances=tol,
        guard=not opts["no_guard"],
        **{k: opts[k] for k in _OPTIONS_AS_GIVEN},
    )


def _echo_gate_failures(res: pipeline.Result) -> None:
    """Print to stderr why the gate refused: contract failures, then each variant's own."""
    from dermedge.convert import gate

    contract = res.report.get("contract_failures", [])
    for f in contract:
        click.echo(f"GATE FAILED (every variant): {f}", err=True)
    if contract:
        click.echo(f"  try: {gate.advice('', contract)}", err=True)
    for r in res.rows:
        own = [f for f in r.get("failures", []) if f not in contract]
        for f in own:
            click.echo(f"GATE FAILED {r['variant']}: {f}", err=True)
        if own and r.get("advice"):
            click.echo(f"  try: {r['advice']}", err=True)
