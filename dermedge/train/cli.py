"""`dermedge train` and `dermedge evaluate`."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from dermedge.data.contract import COLOR_CONSTANCY, CROPS
from dermedge.train.choices import ARCHS, AUGMENTS
from dermedge.train.config import BALANCES, CACHES, STRATEGIES, THRESHOLD_POOLS, TrainConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}  # what --help shows


def _fail(e: BaseException) -> click.ClickException:
    """A ClickException with the error's first line (its type name when it has no message)."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return click.ClickException(msg)


@click.command("train")
@click.option(
    "--data",
    required=True,
    help="Split manifest (folder with manifest.csv, or the CSV) or a dataset folder (split on the fly).",
)
@click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default=DEFAULTS["arch"],
    show_default=True,
)
@click.option(
    "--weights",
    default=DEFAULTS["weights"],
    show_default=True,
    help="imagenet, none, or a weights file (.weights.h5/.keras; a torch .pth for Lite0).",
)
@click.option(
    "--img-size",
    default=DEFAULTS["img_size"],
    show_default=True,
    type=click.IntRange(32, 1024),
    help="Input side in pixels.",
)
@click.option(
    "--crop",
    type=click.Choice(CROPS),
    default=DEFAULTS["crop"],
    show_default=True,
    help="How photos become squares (preprocessing contract).",
)
@click.option(
    "--color-constancy",
    type=click.Choice(COLOR_CONSTANCY),
    default=DEFAULTS["color_constancy"],
    show_default=True,
    help="Colour constancy after crop+resize, recorded in the contract (Shades of Gray, p = 6).",
)
@click.option(
    "--margin",
    default=DEFAULTS["margin"],
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Contract margin: a share of the side added around every photo (edge pixels repeated) "
    "before the model sees it, in training and on the device (contract.add_margin).",
)
@click.option(
    "--epochs",
    default=DEFAULTS["epochs"],
    show_default=True,
    type=click.IntRange(0),
    help="Epochs (the frozen-backbone phase for pretrained backbones; 0 skips it).",
)
@click.option(
    "--fine-tune-epochs",
    default=DEFAULTS["fine_tune_epochs"],
    show_default=True,
    type=click.IntRange(0),
    help="Epochs fine-tuning the top blocks (pretrained backbones).",
)
@click.option(
    "--unfreeze-blocks",
    default=DEFAULTS["unfreeze_blocks"],
    show_default=True,
    type=click.IntRange(0),
    help="Top backbone blocks trained in the fine-tune phase (BatchNorm stays frozen).",
)
@click.option("--batch", default=DEFAULTS["batch"], show_default=True, type=click.IntRange(1))
@click.option(
    "--lr", default=DEFAULTS["lr"], show_default=True, type=click.FloatRange(0, min_open=True)
)
@click.option(
    "--fine-tune-lr",
    type=click.FloatRange(0, min_open=True),
    help="Fine-tune learning rate [default: lr/10].",
)
@click.option("--seed", default=DEFAULTS["seed"], show_default=True)
@click.option("--name", help="Run name under runs/train/ (default exp, exp2, ...).")
@click.option("--exist-ok", is_flag=True, help="Reuse a non-empty run folder.")
@click.option(
    "--resume", is_flag=True, help="Continue the interrupted run --name from its last checkpoint."
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=DEFAULTS["strategy"],
    show_default=True,
    help="tf.distribute: mirrored = one host, many devices; multiworker = TF_CONFIG cluster.",
)
@click.option(
    "--target-sensitivity",
    default=DEFAULTS["target_sensitivity"],
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Operating threshold: sensitivity target on the validation split.",
)
@click.option(
    "--sensitivity-margin",
    default=DEFAULTS["sensitivity_margin"],
    show_default=True,
    type=click.FloatRange(0),
    help="Binomial standard errors added to the target when choosing the threshold on val.",
)
@click.option(
    "--patience",
    default=DEFAULTS["patience"],
    show_default=True,
    type=click.IntRange(1),
    help="Early stopping: epochs without a better val AUC.",
)
@click.option(
    "--augment",
    "augmentation",
    type=click.Choice(AUGMENTS),
    default=DEFAULTS["augmentation"],
    show_default=True,
    help="basic: flips, rotations, zoom, colour jitter; field: also colour casts, gamma, dark "
    "vignettes, defocus, noise, JPEG and resolution loss (another clinic's device); scale / "
    "field-scale: basic / field with the lesion-scale zoom (log-uniform 0.56-1.8x, zoom-outs "
    "filled with the photo's edge pixels); none.",
)
@click.option("--no-augment", is_flag=True, help="Train without augmentation (= --augment none).")
@click.option(
    "--threshold-pool",
    type=click.Choice(THRESHOLD_POOLS),
    default=DEFAULTS["threshold_pool"],
    show_default=True,
    help="Choose the threshold for the sensitivity target on the pooled validation split with "
    "a floor of 0.90 in every source with >= 20 malignant (pooled-floor), for the target in "
    "every such source (worst-source), or pooled only.",
)
@click.option(
    "--no-deterministic", is_flag=True, help="Skip tf.config.experimental.enable_op_determinism."
)
@click.option(
    "--dropout", default=DEFAULTS["dropout"], show_default=True, type=click.FloatRange(0, 0.9)
)
@click.option(
    "--label-smoothing",
    default=DEFAULTS["label_smoothing"],
    show_default=True,
    type=click.FloatRange(0, 0.5),
)
@click.option(
    "--balance",
    type=click.Choice(BALANCES),
    default=DEFAULTS["balance"],
    show_default=True,
    help="Loss weights: balance the classes overall, or within each source dataset (so that a "
    "source's look, e.g. low-resolution thumbnails, is no evidence for the label).",
)
@click.option(
    "--bootstrap",
    "n_boot",
    default=DEFAULTS["n_boot"],
    show_default=True,
    type=click.IntRange(100),
    help="Bootstrap resamples for the CIs.",
)
@click.option(
    "--cache",
    type=click.Choice(CACHES),
    default=DEFAULTS["cache"],
    show_default=True,
    help="Decoded pixels: in memory, streamed from .npy shards on disk, or auto (stream when the "
    "training pixels exceed 2 GiB).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Where decoded pixels are cached (default runs/cache; share one on a cluster's file system).",
)
@click.option(
    "--mixed-precision",
    is_flag=True,
    help="float16 compute on GPUs (bfloat16 on CPUs), float32 weights; the saved model is float32.",
)
@click.option(
    "--source-by",
    metavar="COLUMN",
    help="--data is a dataset folder: name each image's source by this metadata column (HAM10000: "
    "dataset -> ham10000:vidir_molemax, ...) for --balance source and per-source thresholds.",
)
@click.option("--quiet", is_flag=True, help="No per-step progress bars (one line per epoch).")
def train(**opts: Any) -> None:
    """Train a Keras model, pick its operating threshold on val, evaluate it on test.

    Writes runs/train/NAME/: model.keras, manifest.csv/json, history.csv, curves.png,
    model_card.json and eval/. With --resume, the other options are taken from the run's config.json.
    """
    from dermedge.train.trainer import TrainError
    from dermedge.train.trainer import train as run_train

    resume, exist_ok, quiet = opts.pop("resume"), opts.pop("exist_ok"), opts.pop("quiet")
    try:
        res = run_train(
            _train_config(opts), resume=resume, exist_ok=exist_ok, verbose=2 if quiet else 1
        )
    except (TrainError, FileNotFoundError, ValueError, OSError) as e:
        raise _fail(e) from e
    click.echo(f"run folder: {res.run_dir}")


def _train_config(opts: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of `train`'s options (each option is a TrainConfig field, or its negation)."""
    weights = opts.pop("weights")
    opts["weights"] = None if weights.lower() == "none" else weights
    opts["augment"] = not opts.pop("no_augment")
    opts["deterministic"] = not opts.pop("no_deterministic")
    return TrainConfig(**opts)


def _resolve_model(target: str) -> tuple[Path, Path | None]:
    """(model file, run folder or None) of a run folder or a .keras file."""
    p = Path(target)
    if p.is_dir():
        if not (p / "model.keras").is_file():
            raise click.ClickException(f"{p} has no model.keras (is the training finished?)")
        return p / "model.keras", p
    if p.is_file():
        if p.suffix == ".tflite":  # evaluated through the edge runtime, card from the file
            return p, None
        if p.suffix != ".keras":
            raise click.ClickException(f"{p}: expected a run folder, a .keras or a .tflite model")
        return p, p.parent if (p.parent / "model_card.json").is_file() else None
    raise click.ClickException(f"{target}: no such run folder or model")


@click.command("evaluate")
@click.argument("target", metavar="RUN_OR_MODEL")
@click.option(
    "--data",
    help="Manifest (folder or CSV) or a labelled dataset folder [default: the run's manifest].",
)
@click.option(
    "--split",
    default="test",
    show_default=True,
    help="Split to evaluate (a dataset without splits is used whole).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    help="Operating threshold [default: the model card's].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output folder [default: RUN/eval or RUN/eval-<data>-<split>; runs/eval/<model>-... for a .tflite].",
)
@click.option("--bootstrap", "n_boot", default=2000, show_default=True, type=click.IntRange(100))
@click.option("--batch", default=64, show_default=True, type=click.IntRange(1))
@click.option(
    "--external",
    is_flag=True,
    help="--data is a dataset the model never trained on: check overlap with the training "
    "manifest first (refuse on any), evaluate every image (unless --split), report at the card, "
    "Youden and sensitivity-0.95 thresholds and per diagnosis [out: RUN/eval-<dataset>/, "
    "runs/eval/<model>-<dataset>/].",
)
@click.option(
    "--train-manifest",
    metavar="PATH",
    help="--external: the model's training manifest [default: RUN/manifest.csv, or the card's].",
)
@click.option(
    "--allow-overlap",
    is_flag=True,
    help="--external: evaluate even when photos overlap the training data (loudly warned).",
)
@click.pass_context
def evaluate(
    ctx: click.Context,
    target: str,
    data: str | None,
    split: str,
    threshold: float | None,
    out: str | None,
    n_boot: int,
    batch: int,
    external: bool,
    train_manifest: str | None,
    allow_overlap: bool,
) -> None:
    """Accuracy, precision, sensitivity, specificity, F1 and ROC AUC with bootstrap 95% CIs, at the
    card's operating threshold and at 0.5; confusion, ROC, PR and reliability plots.

    With --external, an external evaluation on a dataset the model never trained on (see
    dermedge.train.external); record it in the card with `dermedge card MODEL --add-external`.
    """
    if (train_manifest or allow_overlap) and not external:
        raise click.UsageError("--train-manifest/--allow-overlap: only with --external")
    if external and not data:
        raise click.UsageError("--external needs --data ROOT (the dataset the model never saw)")
    from dermedge.data.manifest import manifest_sha256
    from dermedge.train.trainer import TrainError, evaluate_model, resolve_records

    model_path, run_dir = _resolve_model(target)
    card = _model_card(model_path, run_dir)
    source = _data_source(data, run_dir)
    try:
        records, csv_path = resolve_records(source, None, split_dataset=False)
    except TrainError as e:
        raise _fail(e) from e
    if external:
        _evaluate_external(ctx, model_path, run_dir, card, records, source)
        return
    out_dir = _eval_dir(out, run_dir, model_path, data, split, source)
    extra = {"data": source, "manifest_sha256": manifest_sha256(csv_path) if csv_path else None}
    try:
        report = evaluate_model(
            model_path, card, records, split, out_dir, threshold, n_boot, batch, extra=extra
        )
    except (TrainError, ValueError, OSError) as e:
        raise _fail(e) from e
    _echo_report(report, model_path, source, out_dir, card is None)


def _evaluate_external(
    ctx: click.Context,
    model_path: Path,
    run_dir: Path | None,
    card: dict[str, Any] | None,
    records: list[Any],
    source: str,
) -> None:
    """`evaluate --external`: the rest of its options are read from the command's parameters."""
    from click.core import ParameterSource

    from dermedge.train.external import evaluate_external

    p = ctx.params
    split_given = ctx.get_parameter_source("split") == ParameterSource.COMMANDLINE
    evaluate_external(
        model_path,
        run_dir,
        card,
        records,
        source,
        p["split"] if split_given else None,
        p["threshold"],
        p["out"],
        p["train_manifest"],
        p["allow_overlap"],
        p["n_boot"],
        p["batch"],
    )


def _model_card(model_path: Path, run_dir: Path | None) -> dict[str, Any] | None:
    """The model's card: embedded in a .tflite, else the run folder's model_card.json, or None."""
    if model_path.suffix == ".tflite":
        from dermedge.edge.card import read_card

        return read_card(model_path)
    from dermedge.train.card import read_run_card

    return read_run_card(run_dir) if run_dir else None


def _data_source(data: str | None, run_dir: Path | None) -> str:
    """--data, else the run folder (its manifest.csv); refused when there is neither."""
    source = data or (str(run_dir) if run_dir and (run_dir / "manifest.csv").is_file() else None)
    if source is None:
        raise click.ClickException("no data: pass --data (a manifest or a labelled dataset folder)")
    return source


def _eval_dir(
    out: str | None,
    run_dir: Path | None,
    model_path: Path,
    data: str | None,
    split: str,
    source: str,
) -> Path:
    """--out, else RUN/eval (the run's own test split) or RUN/eval-<data>-<split>; for a bare
    model file (maybe inside the installed package) a new folder under runs/eval/."""
    tag = "" if (data is None and split == "test") else f"-{Path(source).resolve().name}-{split}"
    if out:
        return Path(out)
    if run_dir:
        return run_dir / f"eval{tag}"
    from dermedge.runs import new_run_dir

    return new_run_dir("eval", f"{model_path.stem}{tag or '-test'}", exist_ok=True)


def _echo_report(
    report: dict[str, Any], model_path: Path, source: str, out_dir: Path, no_card: bool
) -> None:
    """Print what was evaluated, the metrics table and the files written."""
    from dermedge.train.evaluate import report_table

    click.echo(
        f"{model_path} on {source} [{report['split']}]: {report['n']} images "
        f"({report['positives']} malignant)"
    )
    click.echo(report_table(report))
    click.echo(
        f"written: {out_dir}/metrics.json and " + ", ".join(report.get("plots", {}).values())
    )
    if no_card:
        click.echo(
            "note: no model card beside the model; threshold "
            + json.dumps(report["operating_threshold"])
        )
