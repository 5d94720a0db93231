"""Train a model on a split manifest: two-phase transfer, early stopping on val AUC, resumable.

Run folder `runs/train/<name>/`:
  config.json, manifest.csv/json        what was asked and on which data (manifest copied)
  checkpoints/state.json, epoch-N.keras the resumable state (model + optimizer, callbacks, history)
  checkpoints/best.weights.h5           best validation AUC so far
  model.keras, history.csv, curves.png, model_card.json, eval/   the results
Every file is written atomically, so killing the process at any point leaves a resumable run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.data.contract import InputContract
from dermedge.data.index import Record
from dermedge.data.io import atomic_write_bytes
from dermedge.data.manifest import ManifestError, manifest_sha256, read_manifest
from dermedge.metrics import clean_json
from dermedge.runs import format_table, new_run_dir, runs_root
from dermedge.train import evaluate as ev
from dermedge.train.card import make_card, write_card
from dermedge.train.config import (
    BALANCES,
    CACHES,
    STRATEGIES,
    STREAM_ABOVE_BYTES,
    THRESHOLD_POOLS,
    TrainConfig,
    TrainError,
    check_config,
)
from dermedge.train.distributed import (
    distributed_input,
    fit_multiworker,
    is_chief,
    make_strategy,
    precision,
    precision_policy,
    weights_digest,
    worker_dir,
)
from dermedge.train.model_eval import evaluate_model, predict
from dermedge.train.run_state import (
    STATE,
    RunState,
    load_weights,
    log,
    save_keras,
    state_callback,
    write_history,
    write_json,
    write_state,
)


def _is_manifest(p: Path) -> bool:
    """Whether `p` is a manifest CSV or a folder holding a manifest.csv."""
    return (p.is_file() and p.suffix == ".csv") or (p.is_dir() and (p / "manifest.csv").is_file())


def resolve_records(
    data: str,
    run_dir: Path | None,
    seed: int = 0,
    split_dataset: bool = True,
    source_by: str | None = None,
) -> tuple[list[Record], Path | None]:
    """Records of a manifest (folder or CSV) or of a dataset folder.

    A dataset folder is split leakage-free on the fly (`split_dataset`), or else read as it is
    (its own train/test folders, if any; evaluation). With `run_dir`, the manifest (CSV + JSON)
    ends up there: copied, or written by the split. Returns the records and the manifest CSV
    they came from (None for a dataset read as it is).
    """
    p = Path(data)
    if not p.exists():
        raise TrainError(f"--data {data}: no such file or folder")
    if _is_manifest(p):
        if source_by:
            raise TrainError(
                "--source-by applies to a dataset folder: a manifest names its sources"
            )
        csv_path = p if p.is_file() else p / "manifest.csv"
        try:
            records = read_manifest(csv_path)
        except ManifestError as e:
            raise TrainError(str(e)) from e
        if run_dir is not None and csv_path.resolve() != (run_dir / "manifest.csv").resolve():
            atomic_write_bytes(run_dir / "manifest.csv", csv_path.read_bytes())
            meta = csv_path.with_suffix(".json")
            if meta.is_file():
                atomic_write_bytes(run_dir / "manifest.json", meta.read_bytes())
            else:  # keep the data root findable from the copy
                write_json(run_dir / "manifest.json", {"root": str(csv_path.parent.resolve())})
            csv_path = run_dir / "manifest.csv"
        return records, csv_path
    if not p.is_dir():
        raise TrainError(
            f"--data {data}: not a manifest CSV, a run folder with manifest.csv, or a dataset folder"
        )
    from dermedge.data.analysis import analyse
    from dermedge.data.index import read_dataset
    from dermedge.data.split import make_split, write_manifest

    try:
        index = read_dataset(p, source_by)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise TrainError(f"--data {data}: {e}") from e
    if not split_dataset:
        return index.records, None
    log(f"{data} is a dataset folder: analysing it and writing a leakage-free split (seed {seed})")
    analysis = analyse(index)
    try:
        split = make_split(analysis, seed=seed)
    except ValueError as e:
        raise TrainError(str(e)) from e
    out = run_dir if run_dir is not None else Path(tempfile.mkdtemp(prefix="dermedge-split-"))
    csv_path = write_manifest(split, analysis, out)
    return read_manifest(csv_path), csv_path


def _set_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and the backend; `deterministic` also turns on TF op determinism."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        with contextlib.suppress(Exception):  # already initialised, or unsupported build
            tf.config.experimental.enable_op_determinism()


def compile_model(model: Any, lr: float, steps: int, label_smoothing: float = 0.0) -> None:
    """Compile as every training phase does: Adam on a rate decayed by a cosine over `steps`,
    binary cross-entropy, AUC and accuracy (public so a notebook can show the step)."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps), alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


@dataclass
class TrainResult:
    run_dir: Path
    card: dict[str, Any]
    report: dict[str, Any]


@dataclass
class _Run:
    """A run being trained: its config, folder, records and saved state (None when new)."""

    cfg: TrainConfig
    run_dir: Path
    records: list[Record]
    csv_path: Path
    state: dict[str, Any] | None
    t_start: float = field(default_factory=time.time)

    @property
    def ckpt(self) -> Path:
        return self.run_dir / "checkpoints"


@dataclass
class _Data:
    """The decoded splits, the weights the loss uses and the tf.data pipelines."""

    contract: InputContract
    splits: dict[str, Any]
    skipped: dict[str, str]
    weights: dict[int, float]
    per_source: dict[str, dict[str, float]]
    augment: Any
    train_ds: Any
    val_ds: Any
    steps: int


def train(
    cfg: TrainConfig,
    resume: bool = False,
    exist_ok: bool = False,
    verbose: int | str = "auto",
    on_start: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train per `cfg` (or continue the run `cfg.name` with `resume`) and evaluate on test:
    prepare the run -> load the data -> fit the phases -> finish (threshold, test, card)."""
    run = _resume_run(cfg) if resume else _new_run(cfg, exist_ok)
    if on_start:
        on_start(run.run_dir)
    cfg = run.cfg
    if cfg.weights == "none":
        cfg.weights = None
    strategy = make_strategy(cfg.strategy)  # first: multi-worker collectives configure at startup
    _set_determinism(cfg.seed, cfg.deterministic)
    data = _load_data(run, strategy)
    state = _start_state(run)
    with precision(cfg.mixed_precision):
        model, info = _fit_phases(run, data, strategy, state, verbose)
    if cfg.strategy == "multiworker" and model is not None:
        log(f"trainable weights digest {weights_digest(model)} (the same on every worker)")
    final = _best_model(run, strategy, model)
    if is_chief():
        save_keras(final, run.run_dir / "model.keras")
    state["wall_seconds"] = state["wall_before"] + time.time() - run.t_start
    result = _finish(run, data, state, final, info, strategy.num_replicas_in_sync)
    if not is_chief():
        shutil.rmtree(run.run_dir, ignore_errors=True)
    return result


def _resume_run(cfg: TrainConfig) -> _Run:
    """The interrupted run `cfg.name`: its saved config, manifest and state."""
    if not cfg.name:
        raise TrainError("--resume needs --name of the run to continue")
    run_dir = runs_root() / "train" / cfg.name
    state_path = run_dir / "checkpoints" / STATE
    if not (run_dir / "config.json").is_file():
        raise TrainError(f"nothing to resume: {run_dir} has no config.json")
    saved = TrainConfig(**json.loads((run_dir / "config.json").read_text()))
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if state and state.get("finished"):
        raise TrainError(f"{run_dir} already finished; nothing to resume")
    records, _ = resolve_records(str(run_dir), None)
    return _Run(saved, run_dir, records, run_dir / "manifest.csv", state)


def _new_run(cfg: TrainConfig, exist_ok: bool) -> _Run:
    """A checked config, a new run folder with the manifest and config.json in it."""
    check_config(cfg)
    try:
        run_dir = new_run_dir("train", cfg.name, exist_ok=exist_ok) if is_chief() else worker_dir()
    except FileExistsError as e:
        raise TrainError(f"{e} (or --resume to continue it)") from e
    cfg.name = run_dir.name
    try:
        records, csv_path = resolve_records(cfg.data, run_dir, cfg.seed, source_by=cfg.source_by)
    except TrainError:
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    assert csv_path is not None  # a split is always written for training
    write_json(run_dir / "config.json", asdict(cfg))
    return _Run(cfg, run_dir, records, csv_path, None)


def _load_data(run: _Run, strategy: Any) -> _Data:
    """Decode the splits through the contract, weigh the classes, and build the pipelines."""
    from dermedge.train.data import augment_preset, load_split, make_dataset
    from dermedge.train.models import input_contract

    cfg = run.cfg
    contract = input_contract(cfg.arch, cfg.img_size, cfg.crop, cfg.color_constancy, cfg.margin)
    cache = cfg.cache_dir or str(runs_root() / "cache")
    stream = _streams(cfg, run.records, contract.size)
    splits = {
        s: load_split(run.records, s, contract, cache, stream=stream)
        for s in ("train", "val", "test")
    }
    for s in ("train", "val"):
        c = splits[s].counts()
        if min(c.values()) == 0:
            raise TrainError(f"the {s} split needs both classes; it has {c} ({run.csv_path})")
    skipped = {p: r for s in splits.values() for p, r in s.skipped.items()}
    for p, r in list(skipped.items())[:10]:
        log(f"skipped unreadable {p}: {r}")
    log(
        f"run {run.run_dir}: {cfg.arch} {cfg.img_size}px, train {splits['train'].counts()}, "
        f"val {splits['val'].counts()}, test {splits['test'].counts()}, "
        f"pixels {'streamed from shards' if stream else 'in memory'}"
    )
    weights, sample_w, per_source = _loss_weights(cfg, splits["train"])
    aug = augment_preset(cfg.augmentation if cfg.augment else "none")
    cc_p = contract.color_constancy_p if contract.color_constancy != "none" else None

    def train_input(batch: int, pipelines: tuple[int, int] = (1, 0)) -> Any:
        """The training batches of one input pipeline (`pipelines`: count, this one's id)."""
        return make_dataset(splits["train"], batch, True, cfg.seed, sample_w, aug, cc_p, pipelines)

    train_ds = distributed_input(strategy, cfg, train_input)
    val_ds = make_dataset(splits["val"], cfg.batch, False)
    steps = int(np.ceil(len(splits["train"]) / cfg.batch))
    return _Data(contract, splits, skipped, weights, per_source, aug, train_ds, val_ds, steps)


def _streams(cfg: TrainConfig, records: list[Record], size: int) -> bool:
    """Whether the splits stream from shard files (`cache`: stream, or auto and the training
    pixels would not fit comfortably in memory)."""
    if cfg.cache != "auto":
        return cfg.cache == "stream"
    n_train = sum(1 for r in records if r.split == "train")
    return n_train * size * size * 3 > STREAM_ABOVE_BYTES


def _loss_weights(
    cfg: TrainConfig, train_split: Any
) -> tuple[dict[int, float], Any, dict[str, dict[str, float]]]:
    """(class weights, what the loss uses: class or per-image weights, per-source weights)."""
    from dermedge.train.data import class_weights, source_balanced_weights, source_class_weights

    weights = class_weights(train_split.y)
    log(f"class weights (balanced): benign {weights[0]:.4f}, malignant {weights[1]:.4f}")
    if cfg.balance != "source":
        return weights, weights, {}
    per = source_class_weights(train_split.y, train_split.sources)
    per_source = {src or "-": {"benign": w[0], "malignant": w[1]} for src, w in per.items()}
    for src, w in per_source.items():
        log(
            f"class weights for source {src}: benign {w['benign']:.4f}, "
            f"malignant {w['malignant']:.4f}"
        )
    return weights, source_balanced_weights(train_split.y, train_split.sources), per_source


def _start_state(run: _Run) -> dict[str, Any]:
    """A fresh run state, or the saved one of a resumed run (one more resume counted)."""
    state = run.state
    if state is None:
        state = {
            "epochs_done": 0,
            "phase": 0,
            "phase_epoch": 0,
            "phases_done": 0,
            "history": [],
            "best_val_auc": None,
            "best_epoch": None,
            "wait": 0,
            "stopped_early": [],
            "wall_seconds": 0.0,
            "resumes": 0,
        }
    else:
        state["resumes"] = state.get("resumes", 0) + 1
        log(
            f"resuming {run.run_dir} after {state['epochs_done']} epochs "
            f"(phase {state['phase'] + 1}, epoch {state['phase_epoch']})"
        )
    state["wall_before"] = state.get("wall_seconds", 0.0)
    run.ckpt.mkdir(exist_ok=True)
    return state


def _fit_phases(
    run: _Run, data: _Data, strategy: Any, state: dict[str, Any], verbose: int | str
) -> tuple[Any, dict[str, Any]]:
    """Fit each phase not yet done (continuing a phase from its last checkpoint)."""
    cfg, phases = run.cfg, run.cfg.phases()
    info: dict[str, Any] = {}
    model = None
    for idx, phase in enumerate(phases):
        if idx < state["phases_done"]:
            continue
        with strategy.scope():
            model, initial = _phase_model(run, data, state, idx, phase, model)
        n_train = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        info[phase["name"]] = {
            "trainable_params": n_train,
            "total_params": model.count_params(),
            "lr": phase["lr"],
            "unfreeze_blocks": phase["unfreeze"],
        }
        log(
            f"phase {phase['name']} ({idx + 1}/{len(phases)}): {phase['epochs']} epochs, "
            f"lr {phase['lr']:g}, {n_train:,} of {model.count_params():,} parameters trainable, "
            f"{strategy.num_replicas_in_sync} replica(s)"
        )
        run_state = RunState(run.run_dir, state, idx, phase, cfg.patience, is_chief(), run.t_start)
        if cfg.strategy == "multiworker":
            fit_multiworker(
                model,
                strategy,
                data.train_ds,
                data.splits["val"],
                phase["epochs"],
                initial,
                run_state,
                verbose,
            )
        else:
            model.fit(
                data.train_ds,
                validation_data=data.val_ds,
                epochs=phase["epochs"],
                initial_epoch=initial,
                callbacks=[state_callback(run_state)],
                verbose=verbose,
                shuffle=False,
            )
        state["phase"], state["phase_epoch"] = idx + 1, 0
        state["phases_done"] = idx + 1
    return model, info


def _phase_model(
    run: _Run, data: _Data, state: dict[str, Any], idx: int, phase: dict[str, Any], model: Any
) -> tuple[Any, int]:
    """(model, initial epoch) for phase `idx`: the mid-phase checkpoint, or the model of the last
    phase (built if none) with the best weights so far, its blocks unfrozen and compiled."""
    import keras

    from dermedge.train.models import WeightsError, build_model, set_trainable

    cfg, ckpt = run.cfg, run.ckpt
    if state["phase"] == idx and state["phase_epoch"] > 0 and state.get("last_checkpoint"):
        return keras.models.load_model(ckpt / state["last_checkpoint"]), state["phase_epoch"]
    if model is None:
        try:
            model = build_model(cfg.arch, cfg.img_size, cfg.weights, cfg.dropout)
        except WeightsError as e:
            raise TrainError(str(e)) from e
    if idx > 0 and (ckpt / "best.weights.h5").is_file():
        load_weights(model, ckpt / "best.weights.h5")
    set_trainable(model, cfg.arch, phase["unfreeze"])
    compile_model(model, phase["lr"], data.steps * phase["epochs"], cfg.label_smoothing)
    state["wait"] = 0
    return model, 0


def _best_model(run: _Run, strategy: Any, model: Any) -> Any:
    """The best epoch's weights in a fresh, uncompiled model (no optimizer state)."""
    from dermedge.train.models import build_model

    cfg = run.cfg
    if model is None:  # resumed after the last phase finished but before the end
        with strategy.scope():
            model = build_model(cfg.arch, cfg.img_size, None, cfg.dropout)
    if (run.ckpt / "best.weights.h5").is_file():
        load_weights(model, run.ckpt / "best.weights.h5")
    final = build_model(cfg.arch, cfg.img_size, None, cfg.dropout)
    final.set_weights(model.get_weights())
    for mine, trained in zip(final.layers, model.layers, strict=True):
        mine.trainable = trained.trainable
    return final


def _finish(
    run: _Run, data: _Data, state: dict[str, Any], final: Any, info: dict[str, Any], replicas: int
) -> TrainResult:
    """Threshold on val, metrics on test, the card; the run marked finished."""
    cfg = run.cfg
    batch = max(cfg.batch, 32)
    thr, metrics = _choose_threshold(
        cfg, data.splits["val"], predict(final, data.splits["val"].x, batch)
    )
    report = _test_metrics(run, data.splits["test"], final, thr["threshold"], metrics)
    training = _training_record(cfg, data, state, info, replicas, final.count_params())
    card = make_card(
        cfg.name or run.run_dir.name,
        cfg.arch,
        data.contract,
        thr["threshold"],
        cfg.target_sensitivity,
        clean_json(metrics),
        _data_record(run, data),
        clean_json(training),
    )
    card["threshold_policy"].update(
        {
            "margin_se": cfg.sensitivity_margin,
            "effective_target": thr["effective_target"],
            "pool": thr["pool"],
            "binding_source": thr.get("binding_source"),
            "per_source": thr.get("per_source"),
        }
    )
    if is_chief():
        write_card(card, run.run_dir)
        write_history(state["history"], run.run_dir)
        state["finished"] = True
        last = state.pop("last_checkpoint", None)
        write_state(run.ckpt, state)
        if last:
            with contextlib.suppress(OSError):
                (run.ckpt / last).unlink()
    if report:
        print(ev.report_table(report), flush=True)
    print(summary_table(card), flush=True)
    return TrainResult(run.run_dir, card, report)


def _choose_threshold(
    cfg: TrainConfig, val: Any, p_val: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operating threshold chosen on val (per source when pooled by worst source)."""
    thr = ev.threshold_for_policy(
        val.y,
        p_val,
        val.sources,
        cfg.threshold_pool,
        cfg.target_sensitivity,
        cfg.sensitivity_margin,
    )
    for src, row in thr.get("per_source", {}).items():
        log(
            f"val {src}: n {row['n']} ({row['n_pos']} malignant), own threshold "
            f"{row['own_threshold']}, at the chosen one sensitivity {row['sensitivity']:.3f}, "
            f"specificity {row['specificity']:.3f}"
        )
    val_auc = ev.roc_auc(val.y, p_val)
    log(
        f"operating threshold {thr['threshold']:.4f}: val sensitivity {thr['sensitivity']:.4f}, "
        f"specificity {thr['specificity']:.4f} (target {cfg.target_sensitivity}, "
        f"+{cfg.sensitivity_margin} SE -> {thr['effective_target']:.4f}); val AUC {val_auc:.4f}"
    )
    return thr, {"val": {"roc_auc": val_auc, "n": len(val), **thr}}


def _test_metrics(
    run: _Run, test: Any, final: Any, threshold: float, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The test report (eval/ on the chief) and its summary added to `metrics`."""
    cfg = run.cfg
    if not (len(test) and min(test.counts().values()) > 0):
        log("no usable test split (needs both classes): test metrics left out of the card")
        return {}
    p_test = predict(final, test.x, max(cfg.batch, 32))
    extra = {
        "split": "test",
        "model": str(run.run_dir / "model.keras"),
        "manifest_sha256": manifest_sha256(run.csv_path),
    }
    report = ev.evaluate_predictions(
        test.y,
        p_test,
        threshold,
        run.run_dir / "eval" if is_chief() else None,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        title=f"{cfg.name} test",
        paths=test.paths,
        extra=extra,
    )
    metrics["test"] = ev.summarize(report)
    metrics["test"]["at_0.5"] = {k: report["at_0.5"][k] for k in ev.METRICS}
    if len(set(test.sources)) > 1:
        metrics["test_per_source"] = ev.per_source_metrics(test.y, p_test, test.sources, threshold)
        for src, row in metrics["test_per_source"].items():
            log(
                f"test {src}: AUC {row['roc_auc']:.4f}, sensitivity {row['recall']:.4f}, "
                f"specificity {row['specificity']:.4f} (n {row['n']})"
            )
    return report


def _data_record(run: _Run, data: _Data) -> dict[str, Any]:
    """The card's `data`: which manifest, where its images live, the counts."""
    meta_path = run.csv_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {
        "manifest": "manifest.csv",
        "manifest_sha256": manifest_sha256(run.csv_path),
        "source": run.cfg.data,
        "root": meta.get("root"),
        "mode": meta.get("mode"),
        "linked_to": meta.get("linked_to"),
        "counts": {s: v.counts() for s, v in data.splits.items()},
        "skipped": len(data.skipped),
    }


def _training_record(
    cfg: TrainConfig,
    data: _Data,
    state: dict[str, Any],
    info: dict[str, Any],
    replicas: int,
    params: int,
) -> dict[str, Any]:
    """The card's `training`: the config, weights, phases and how the run went."""
    return {
        "config": asdict(cfg),
        "class_weights": {"benign": data.weights[0], "malignant": data.weights[1]},
        "class_weights_per_source": data.per_source or None,
        "phases": cfg.phases(),
        "phase_info": info,
        "augmentation": data.augment.to_dict() if cfg.augment else None,
        "epochs_run": state["epochs_done"],
        "best_epoch": state["best_epoch"],
        "best_val_auc": state["best_val_auc"],
        "stopped_early": state["stopped_early"],
        "strategy": cfg.strategy,
        "replicas": replicas,
        "precision": precision_policy(cfg.mixed_precision),
        "resumes": state.get("resumes", 0),
        "wall_seconds": round(state["wall_seconds"], 1),
        "params": params,
    }


def summary_table(card: dict[str, Any]) -> str:
    """One-glance summary of a trained model."""
    t = card.get("training", {})
    m = card["metrics"].get("test") or {}

    def ci(k: str) -> str:
        """A test metric with its 95% CI when recorded, or n/a when it was not measured."""
        v, c = m.get(k), m.get(f"{k}_ci95")
        if v is None:
            return "n/a"
        return f"{v:.4f} [{c[0]:.4f}, {c[1]:.4f}]" if c and c[0] is not None else f"{v:.4f}"

    rows = [
        ["run", card["name"]],
        ["arch / input", f"{card['arch']} {card['input']['size']}px"],
        ["parameters", f"{t.get('params', 0):,}"],
        ["epochs run / best", f"{t.get('epochs_run')} / {t.get('best_epoch')}"],
        ["best val AUC", f"{t.get('best_val_auc') or float('nan'):.4f}"],
        [
            "threshold (val, sens>=" + str(card["threshold_policy"]["target_sensitivity"]) + ")",
            f"{card['threshold']:.4f}",
        ],
        ["test ROC AUC", ci("roc_auc")],
        ["test accuracy", ci("accuracy")],
        ["test sensitivity", ci("recall")],
        ["test specificity", ci("specificity")],
        ["test accuracy at 0.5", f"{m.get('accuracy_at_0.5') or float('nan'):.4f}"],
        ["wall time", f"{t.get('wall_seconds', 0) / 60:.1f} min"],
    ]
    return format_table(rows, ["summary", "value"])


__all__ = [
    "BALANCES",
    "CACHES",
    "STRATEGIES",
    "THRESHOLD_POOLS",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "check_config",
    "compile_model",
    "evaluate_model",
    "predict",
    "resolve_records",
    "summary_table",
    "train",
    "write_history",
]
