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
import hashlib
import json
import os
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
from dermedge.data.io import atomic_write_bytes, atomic_write_text
from dermedge.data.manifest import ManifestError, manifest_sha256, read_manifest
from dermedge.metrics import clean_json
from dermedge.runs import format_table, new_run_dir, runs_root
from dermedge.train import evaluate as ev
from dermedge.train.card import make_card, write_card

STRATEGIES = ("default", "mirrored", "multiworker")
THRESHOLD_POOLS = ("worst-source", "pooled")
BALANCES = ("class", "source")
CACHES = ("auto", "memory", "stream")
STREAM_ABOVE_BYTES = 2 * 2**30  # cache "auto" streams a train split whose pixels exceed this
STATE = "state.json"


class TrainError(RuntimeError):
    """A user-facing training problem (bad data, bad flags, nothing to resume); one-line message."""


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as config.json and reused by --resume."""

    data: str
    arch: str = "efficientnet_lite0"  # train/choices.py ARCHS
    weights: str | None = "imagenet"
    img_size: int = 224
    crop: str = "squash"
    color_constancy: str = "none"  # contract.COLOR_CONSTANCY; old config.json files mean "none"
    epochs: int = 10  # frozen-backbone phase for pretrained backbones, else all epochs
    fine_tune_epochs: int = 10
    unfreeze_blocks: int = 6
    batch: int = 32
    lr: float = 1e-3
    fine_tune_lr: float | None = None  # default lr / 10
    seed: int = 0
    name: str | None = None
    strategy: str = "default"
    target_sensitivity: float = 0.95
    sensitivity_margin: float = 1.0  # binomial SEs added to the target when choosing on val
    patience: int = 5
    augment: bool = True
    augmentation: str = "basic"  # basic | field | none (train/data.py AUGMENTS)
    threshold_pool: str = "worst-source"  # worst-source: the target met in every val source; pooled
    deterministic: bool = True
    dropout: float = 0.2
    label_smoothing: float = 0.0
    balance: str = (
        "class"  # class: one global class balance; source: classes balanced per source dataset
    )
    n_boot: int = 2000
    cache_dir: str | None = None
    cache: str = "auto"  # CACHES: decoded pixels in memory, streamed from shards, or auto by size
    mixed_precision: bool = False  # float16 compute on GPUs (bfloat16 on CPU); weights float32
    extra: dict[str, Any] = field(default_factory=dict)

    def phases(self) -> list[dict[str, Any]]:
        """[{name, epochs, unfreeze, lr}]: frozen + fine-tune for a pretrained backbone, else one."""
        from dermedge.train.models import PRETRAINED

        ft_lr = self.fine_tune_lr if self.fine_tune_lr is not None else self.lr / 10
        if self.arch in PRETRAINED and self.weights not in (None, "none"):
            out = []  # epochs 0: no frozen phase (continuing from trained weights)
            if self.epochs > 0:
                out.append({"name": "frozen", "epochs": self.epochs, "unfreeze": 0, "lr": self.lr})
            if self.fine_tune_epochs > 0:
                out.append(
                    {
                        "name": "finetune",
                        "epochs": self.fine_tune_epochs,
                        "unfreeze": self.unfreeze_blocks,
                        "lr": ft_lr,
                    }
                )
            return out
        return [{"name": "train", "epochs": self.epochs, "unfreeze": None, "lr": self.lr}]


# --- helpers ------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[dermedge] {msg}", flush=True)


def _save_keras(model: Any, path: Path) -> None:
    """model.save into a temporary `.keras` beside `path`, then one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp) if path.suffix == ".keras" else model.save_weights(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_weights(model: Any, path: Path) -> None:
    """Load model weights saved by `_save_keras`; the optimizer slots they carry are not needed."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
        model.load_weights(path)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(clean_json(obj), indent=2) + "\n")


def write_history(history: list[dict[str, Any]], run_dir: Path) -> None:
    """history.csv (one row per epoch, all phases) and curves.png."""
    if not history:
        return
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    lines = [",".join(keys)]
    for row in history:
        cells = []
        for k in keys:
            v = row.get(k, "")
            cells.append(f"{v:.6g}" if isinstance(v, float) else str(v))
        lines.append(",".join(cells))
    atomic_write_text(run_dir / "history.csv", "\n".join(lines) + "\n")
    ev.plot_history(history, run_dir / "curves.png")


def _is_manifest(p: Path) -> bool:
    return (p.is_file() and p.suffix == ".csv") or (p.is_dir() and (p / "manifest.csv").is_file())


def resolve_records(
    data: str, run_dir: Path | None, seed: int = 0, split_dataset: bool = True
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
                _write_json(run_dir / "manifest.json", {"root": str(csv_path.parent.resolve())})
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
        index = read_dataset(p)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise TrainError(f"--data {data}: {e}") from e
    if not split_dataset:
        return index.records, None
    _log(f"{data} is a dataset folder: analysing it and writing a leakage-free split (seed {seed})")
    analysis = analyse(index)
    try:
        split = make_split(analysis, seed=seed)
    except ValueError as e:
        raise TrainError(str(e)) from e
    out = run_dir if run_dir is not None else Path(tempfile.mkdtemp(prefix="dermedge-split-"))
    csv_path = write_manifest(split, analysis, out)
    return read_manifest(csv_path), csv_path


def _strategy(name: str) -> Any:
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def _is_chief() -> bool:
    cfg = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = cfg.get("task") or {}
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker"
        and task.get("index", 0) == 0
        and "chief" not in cfg.get("cluster", {})
    )


def precision_policy(mixed: bool) -> str:
    """The Keras dtype policy of a run: mixed float16 on GPUs, mixed bfloat16 on CPUs (which
    have no fast float16), else float32. Weights stay float32 in every case."""
    if not mixed:
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def _precision(mixed: bool) -> Any:
    """Train under the run's dtype policy; the saved model is rebuilt in float32 afterwards (so it
    converts to TFLite as any other), since only the compute dtype differed."""
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision_policy(mixed))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def _worker_dir() -> Path:
    """A non-chief worker's scratch run folder (the chief alone writes the run; TF's rule)."""
    return Path(tempfile.mkdtemp(prefix="dermedge-worker-"))


def _set_determinism(seed: int, deterministic: bool) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        with contextlib.suppress(Exception):  # already initialised, or unsupported build
            tf.config.experimental.enable_op_determinism()


# --- the training loop --------------------------------------------------------------------------


class RunState:
    """Per-epoch bookkeeping of a phase: history row, best weights on val AUC, a full checkpoint
    with state.json, and early stopping. A Keras callback (made by `_state_callback`)."""

    def __init__(
        self,
        run_dir: Path,
        state: dict[str, Any],
        phase_idx: int,
        phase: dict[str, Any],
        patience: int,
        chief: bool,
        t_start: float,
    ) -> None:
        self.run_dir, self.ckpt = run_dir, run_dir / "checkpoints"
        self.state, self.phase_idx, self.phase = state, phase_idx, phase
        self.patience, self.chief, self.t_start = patience, chief, t_start
        self.t0 = time.time()

    def begin(self, epoch: int) -> None:
        """Log the epoch and start its clock."""
        self.t0 = time.time()
        _log(
            f"phase {self.phase['name']}: epoch {epoch + 1}/{self.phase['epochs']} "
            f"(run epoch {self.state['epochs_done'] + 1})"
        )

    def end(self, model: Any, epoch: int, logs: dict[str, Any]) -> None:
        """Record the epoch, keep the best weights, checkpoint, and stop early if val AUC stalls."""
        row = self._history_row(model, epoch, logs)
        self.state["history"].append(row)
        self.state["epochs_done"] += 1
        self.state["phase"], self.state["phase_epoch"] = self.phase_idx, epoch + 1
        self._track_best(model, logs.get("val_auc"), row["epoch"])
        last = self.phase["epochs"] == epoch + 1
        if self.state["wait"] >= self.patience and not last:
            _log(f"early stop: val AUC has not improved for {self.patience} epochs")
            self.state["stopped_early"].append(self.phase["name"])
            model.stop_training = True
        if last or model.stop_training:
            self.state["phases_done"] = self.phase_idx + 1
        self.state["wall_seconds"] = self.state.get("wall_before", 0.0) + time.time() - self.t_start
        if self.chief:
            self._checkpoint(model)

    def _history_row(self, model: Any, epoch: int, logs: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": self.state["epochs_done"] + 1,
            "phase": self.phase["name"],
            "phase_epoch": epoch + 1,
        }
        row.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
        row["lr"] = float(np.asarray(model.optimizer.learning_rate))
        row["seconds"] = round(time.time() - self.t0, 2)
        return row

    def _track_best(self, model: Any, auc: float | None, epoch: int) -> None:
        best = self.state.get("best_val_auc")
        if auc is not None and np.isfinite(auc) and (best is None or auc > best + 1e-6):
            self.state.update(best_val_auc=float(auc), best_epoch=epoch, wait=0)
            if self.chief:
                _save_keras(model, self.ckpt / "best.weights.h5")
        else:
            self.state["wait"] = self.state.get("wait", 0) + 1

    def _checkpoint(self, model: Any) -> None:
        """epoch-N.keras, then state.json naming it, then the previous checkpoint is removed."""
        name = f"epoch-{self.state['epochs_done']}.keras"
        _save_keras(model, self.ckpt / name)
        old = self.state.get("last_checkpoint")
        self.state["last_checkpoint"] = name
        _write_state(self.ckpt, self.state)
        if old and old != name:
            with contextlib.suppress(OSError):
                (self.ckpt / old).unlink()
        write_history(self.state["history"], self.run_dir)


def _state_callback(run_state: RunState) -> Any:
    """`run_state` as a Keras callback (Keras is imported only when training)."""
    import keras

    class _Callback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            run_state.begin(epoch)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            run_state.end(self.model, epoch, dict(logs or {}))

    return _Callback()


def _write_state(ckpt: Path, state: dict[str, Any]) -> None:
    _write_json(ckpt / STATE, {k: v for k, v in state.items() if k != "wall_before"})


def _compile(model: Any, lr: float, steps: int, label_smoothing: float) -> None:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps), alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")],
    )


def weights_digest(model: Any) -> str:
    """A short digest of the trainable weights: workers kept in sync by all-reduce agree on it."""
    digest = hashlib.sha256()
    for w in model.trainable_weights:
        digest.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return digest.hexdigest()[:16]


def predict(model: Any, x: Any, batch: int = 64) -> np.ndarray:
    """P(malignant) for uint8 (N, S, S, 3) images (an array, or a lazy one read in slices)."""
    out = np.empty(len(x), dtype=np.float64)
    for i in range(0, len(x), batch):
        chunk = np.asarray(x[i : i + batch], dtype=np.float32)
        out[i : i + batch] = np.asarray(model(chunk, training=False)).reshape(-1)
    return out


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
    strategy = _strategy(cfg.strategy)  # first: multi-worker collectives configure at startup
    _set_determinism(cfg.seed, cfg.deterministic)
    data = _load_data(run, strategy)
    state = _start_state(run)
    with _precision(cfg.mixed_precision):
        model, info = _fit_phases(run, data, strategy, state, verbose)
    if cfg.strategy == "multiworker" and model is not None:
        _log(f"trainable weights digest {weights_digest(model)} (the same on every worker)")
    final = _best_model(run, strategy, model)
    if _is_chief():
        _save_keras(final, run.run_dir / "model.keras")
    state["wall_seconds"] = state["wall_before"] + time.time() - run.t_start
    result = _finish(run, data, state, final, info, strategy.num_replicas_in_sync)
    if not _is_chief():
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


def check_config(cfg: TrainConfig) -> None:
    """Refuse a config that cannot train, before a run folder exists (one-line TrainError)."""
    from dermedge.train.models import ARCHS, input_contract

    if cfg.arch not in ARCHS:
        raise TrainError(f"unknown arch {cfg.arch!r}; expected one of {', '.join(ARCHS)}")
    if cfg.balance not in BALANCES:
        raise TrainError(f"unknown balance {cfg.balance!r}; expected class or source")
    if cfg.threshold_pool not in THRESHOLD_POOLS:
        raise TrainError(
            f"unknown threshold pool {cfg.threshold_pool!r}; expected one of "
            f"{', '.join(THRESHOLD_POOLS)}"
        )
    if cfg.strategy not in STRATEGIES:
        raise TrainError(f"unknown strategy {cfg.strategy!r}")
    if cfg.cache not in CACHES:
        raise TrainError(f"unknown cache {cfg.cache!r}; expected one of {', '.join(CACHES)}")
    try:
        input_contract(cfg.arch, cfg.img_size, cfg.crop, cfg.color_constancy)
    except ValueError as e:
        raise TrainError(str(e)) from e
    if not any(ph["epochs"] > 0 for ph in cfg.phases()):
        raise TrainError("nothing to train: every phase has 0 epochs")
    if not Path(cfg.data).exists():
        raise TrainError(f"--data {cfg.data}: no such file or folder")
    if cfg.weights not in (None, "none", "imagenet") and not Path(cfg.weights).is_file():
        raise TrainError(f"--weights {cfg.weights}: no such file")


def _new_run(cfg: TrainConfig, exist_ok: bool) -> _Run:
    """A checked config, a new run folder with the manifest and config.json in it."""
    check_config(cfg)
    try:
        run_dir = (
            new_run_dir("train", cfg.name, exist_ok=exist_ok) if _is_chief() else _worker_dir()
        )
    except FileExistsError as e:
        raise TrainError(f"{e} (or --resume to continue it)") from e
    cfg.name = run_dir.name
    try:
        records, csv_path = resolve_records(cfg.data, run_dir, cfg.seed)
    except TrainError:
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    assert csv_path is not None  # a split is always written for training
    _write_json(run_dir / "config.json", asdict(cfg))
    return _Run(cfg, run_dir, records, csv_path, None)


def _load_data(run: _Run, strategy: Any) -> _Data:
    """Decode the splits through the contract, weigh the classes, and build the pipelines."""
    from dermedge.train.data import augment_preset, load_split, make_dataset
    from dermedge.train.models import input_contract

    cfg = run.cfg
    contract = input_contract(cfg.arch, cfg.img_size, cfg.crop, cfg.color_constancy)
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
        _log(f"skipped unreadable {p}: {r}")
    _log(
        f"run {run.run_dir}: {cfg.arch} {cfg.img_size}px, train {splits['train'].counts()}, "
        f"val {splits['val'].counts()}, test {splits['test'].counts()}, "
        f"pixels {'streamed from shards' if stream else 'in memory'}"
    )
    weights, sample_w, per_source = _loss_weights(cfg, splits["train"])
    aug = augment_preset(cfg.augmentation if cfg.augment else "none")
    cc_p = contract.color_constancy_p if contract.color_constancy != "none" else None

    def train_input(batch: int, pipelines: tuple[int, int] = (1, 0)) -> Any:
        return make_dataset(splits["train"], batch, True, cfg.seed, sample_w, aug, cc_p, pipelines)

    train_ds = _distributed(strategy, cfg, train_input)
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


def _distributed(strategy: Any, cfg: TrainConfig, train_input: Callable[..., Any]) -> Any:
    """The training input: one dataset; or, under a distribution strategy, one per input pipeline
    (worker), each reading its own part of every epoch at the per-replica batch size.

    Sharded by us (`make_dataset(pipelines=...)`, before augmentation), not by tf.data's
    auto-sharding: with the FILE policy a handful of shard files split unevenly across workers,
    and the DATA policy makes every worker augment every image and then discard most of them.
    """
    if cfg.strategy == "default":
        return train_input(cfg.batch)

    def per_pipeline(ctx: Any) -> Any:
        batch = ctx.get_per_replica_batch_size(cfg.batch)
        return train_input(batch, (ctx.num_input_pipelines, ctx.input_pipeline_id))

    return strategy.distribute_datasets_from_function(per_pipeline)


def _loss_weights(
    cfg: TrainConfig, train_split: Any
) -> tuple[dict[int, float], Any, dict[str, dict[str, float]]]:
    """(class weights, what the loss uses: class or per-image weights, per-source weights)."""
    from dermedge.train.data import class_weights, source_balanced_weights, source_class_weights

    weights = class_weights(train_split.y)
    _log(f"class weights (balanced): benign {weights[0]:.4f}, malignant {weights[1]:.4f}")
    if cfg.balance != "source":
        return weights, weights, {}
    per = source_class_weights(train_split.y, train_split.sources)
    per_source = {src or "-": {"benign": w[0], "malignant": w[1]} for src, w in per.items()}
    for src, w in per_source.items():
        _log(
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
        _log(
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
    from dermedge.train.multiworker import fit_multiworker

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
        _log(
            f"phase {phase['name']} ({idx + 1}/{len(phases)}): {phase['epochs']} epochs, "
            f"lr {phase['lr']:g}, {n_train:,} of {model.count_params():,} parameters trainable, "
            f"{strategy.num_replicas_in_sync} replica(s)"
        )
        run_state = RunState(run.run_dir, state, idx, phase, cfg.patience, _is_chief(), run.t_start)
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
                callbacks=[_state_callback(run_state)],
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
        _load_weights(model, ckpt / "best.weights.h5")
    set_trainable(model, cfg.arch, phase["unfreeze"])
    _compile(model, phase["lr"], data.steps * phase["epochs"], cfg.label_smoothing)
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
        _load_weights(model, run.ckpt / "best.weights.h5")
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
    if _is_chief():
        write_card(card, run.run_dir)
        write_history(state["history"], run.run_dir)
        state["finished"] = True
        last = state.pop("last_checkpoint", None)
        _write_state(run.ckpt, state)
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
    val_sources = val.sources if cfg.threshold_pool == "worst-source" else None
    thr = ev.choose_threshold_across_sources(
        val.y, p_val, val_sources, cfg.target_sensitivity, cfg.sensitivity_margin
    )
    for src, row in thr.get("per_source", {}).items():
        _log(
            f"val {src}: n {row['n']} ({row['n_pos']} malignant), own threshold "
            f"{row['own_threshold']}, at the chosen one sensitivity {row['sensitivity']:.3f}, "
            f"specificity {row['specificity']:.3f}"
        )
    val_auc = ev.roc_auc(val.y, p_val)
    _log(
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
        _log("no usable test split (needs both classes): test metrics left out of the card")
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
        run.run_dir / "eval" if _is_chief() else None,
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
            _log(
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


# --- evaluation of a saved model ----------------------------------------------------------------


def _load_for_eval(model_path: Path) -> tuple[Any, tuple]:
    """A Keras model, or an EdgeModel for a .tflite; and its input shape."""
    try:
        if Path(model_path).suffix == ".tflite":
            from dermedge.edge.runtime import EdgeModel

            edge = EdgeModel(model_path)
            return edge, (None, edge.contract.size, edge.contract.size, 3)
        import keras

        model = keras.models.load_model(model_path, compile=False)
        return model, model.input_shape
    except Exception as e:  # noqa: BLE001
        raise TrainError(
            f"cannot load model {model_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def evaluate_model(
    model_path: Path,
    card: dict[str, Any] | None,
    records: list[Record],
    split: str,
    out_dir: Path,
    threshold: float | None = None,
    n_boot: int = 2000,
    batch: int = 64,
    cache_dir: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics and plots of a saved Keras model, or of a .tflite run through the edge runtime, on
    the labelled `records` (one split or all)."""
    from dermedge.train.data import load_split

    model, shape = _load_for_eval(model_path)
    if card is not None:
        contract = InputContract.from_dict(card["input"])
    else:
        contract = InputContract(size=int(shape[1]))
    if shape[1] is not None and int(shape[1]) != contract.size:
        raise TrainError(f"model input is {shape[1]}px but its card says {contract.size}px")
    thr = float(threshold if threshold is not None else (card or {}).get("threshold", 0.5))
    recs = [r for r in records if r.split == split]
    used = split
    if not recs:
        if any(r.split in ("train", "val", "test") for r in records):
            raise TrainError(
                f"no images in split {split!r} (have: {sorted({str(r.split) for r in records})})"
            )
        recs, used = (
            [Record(r.path, r.label, r.source, r.group, "all", r.dx) for r in records],
            "all",
        )
    data = load_split(recs, used, contract, cache_dir or str(runs_root() / "cache"))
    if len(data) == 0:
        raise TrainError("no readable images to evaluate")
    if min(data.counts().values()) == 0:
        _log(f"warning: only one class present {data.counts()}: AUC and some metrics are undefined")
    prob = (
        model.predict(data.x)
        if Path(model_path).suffix == ".tflite"
        else predict(model, data.x, batch)
    )
    info = {
        "split": used,
        "model": str(model_path),
        "skipped": data.skipped,
        "card_threshold": (card or {}).get("threshold"),
        **(extra or {}),
    }
    name = (card or {}).get("name", Path(model_path).stem)
    return ev.evaluate_predictions(
        data.y,
        prob,
        thr,
        out_dir,
        n_boot=n_boot,
        title=f"{name} {used}",
        paths=data.paths,
        extra=info,
    )


__all__ = [
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "evaluate_model",
    "predict",
    "resolve_records",
    "summary_table",
    "train",
    "write_history",
]
