"""How a run spreads over devices and workers: the tf.distribute strategy, which worker is the
chief, the per-worker training input, mixed precision, and the epoch loop for several workers.

Keras 3's `fit` cannot run under MultiWorkerMirroredStrategy with several workers: it reduces its
per-step logs with `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars across workers
(keras-team/keras#20585, open in Keras 3.15). `fit_multiworker` does what `fit` does with TF's own
engine: Keras's `train_step` in `strategy.run` under `tf.function`, the logs reduced across
workers as scalars, and validation on the whole val split (the same on every worker).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.train.config import STRATEGIES, TrainConfig, TrainError
from dermedge.train.evaluate import roc_auc
from dermedge.train.model_eval import predict


def make_strategy(name: str) -> Any:
    """The tf.distribute strategy `name`: default, mirrored (GPUs, else CPUs) or multiworker."""
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


def is_chief() -> bool:
    """Whether this is the chief: no TF_CONFIG, the chief task, or worker 0 with no chief."""
    cfg = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = cfg.get("task") or {}
    return task.get("type", "chief") == "chief" or (
        task.get("type") == "worker"
        and task.get("index", 0) == 0
        and "chief" not in cfg.get("cluster", {})
    )


def worker_dir() -> Path:
    """A non-chief worker's scratch run folder (the chief alone writes the run; TF's rule)."""
    return Path(tempfile.mkdtemp(prefix="dermedge-worker-"))


def precision_policy(mixed: bool) -> str:
    """The Keras dtype policy of a run: mixed float16 on GPUs, mixed bfloat16 on CPUs (which
    have no fast float16), else float32. Weights stay float32 in every case."""
    if not mixed:
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


@contextlib.contextmanager
def precision(mixed: bool) -> Any:
    """Train under the run's dtype policy; the saved model is rebuilt in float32 afterwards (so it
    converts to TFLite as any other), since only the compute dtype differed."""
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision_policy(mixed))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def distributed_input(strategy: Any, cfg: TrainConfig, train_input: Callable[..., Any]) -> Any:
    """The training input: one dataset; or, under a distribution strategy, one per input pipeline
    (worker), each reading its own part of every epoch at the per-replica batch size.

    Sharded by us (`make_dataset(pipelines=...)`, before augmentation), not by tf.data's
    auto-sharding: with the FILE policy a handful of shard files split unevenly across workers,
    and the DATA policy makes every worker augment every image and then discard most of them.
    """
    if cfg.strategy == "default":
        return train_input(cfg.batch)

    def per_pipeline(ctx: Any) -> Any:
        """This input pipeline's dataset, at the per-replica batch size."""
        batch = ctx.get_per_replica_batch_size(cfg.batch)
        return train_input(batch, (ctx.num_input_pipelines, ctx.input_pipeline_id))

    return strategy.distribute_datasets_from_function(per_pipeline)


def weights_digest(model: Any) -> str:
    """A short digest of the trainable weights: workers kept in sync by all-reduce agree on it."""
    digest = hashlib.sha256()
    for w in model.trainable_weights:
        digest.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return digest.hexdigest()[:16]


def fit_multiworker(
    model: Any,
    strategy: Any,
    train_ds: Any,
    val: Any,
    epochs: int,
    initial_epoch: int,
    run_state: Any,
    verbose: int | str,
) -> None:
    """Train `model` (compiled, in `strategy.scope()`) on the distributed `train_ds`; each epoch
    ends with `run_state.end(model, epoch, logs)` like the Keras callback, then stops if asked."""
    import keras
    import tensorflow as tf

    _build(model, strategy, train_ds)

    @tf.function
    def step(batch: Any) -> dict[str, Any]:
        """One distributed training step; its logs averaged across the replicas."""
        logs = strategy.run(model.train_step, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    for epoch in range(initial_epoch, epochs):
        run_state.begin(epoch)
        model.reset_metrics()
        bar = keras.utils.Progbar(None, verbose=1 if verbose in ("auto", 1) else 0)
        logs: dict[str, float] = {}
        for batch in train_ds:
            logs = {k: float(v) for k, v in step(batch).items()}
            bar.add(1, list(logs.items()))
        logs.update(val_logs(model, val))
        run_state.end(model, epoch, logs)
        if model.stop_training:
            break


def _build(model: Any, strategy: Any, train_ds: Any) -> None:
    """Build the compiled metrics, loss and optimizer from this worker's first batch (shapes only),
    in the strategy's scope, as `fit` does before its first step."""
    import tensorflow as tf

    first = next(iter(train_ds))
    local = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], first)
    with strategy.scope():
        model._symbolic_build(data_batch=local)  # Keras's own pre-fit build (private API)


def val_logs(model: Any, val: Any, batch: int = 64) -> dict[str, float]:
    """val_loss (the compiled loss, as `fit` reports it), val_auc and val_accuracy (at 0.5, as
    Keras's BinaryAccuracy) on the whole validation split."""
    p = predict(model, val.x, batch)
    y = np.asarray(val.y, dtype=np.float64)
    loss = model.loss(y.reshape(-1, 1).astype(np.float32), p.reshape(-1, 1).astype(np.float32))
    return {
        "val_loss": float(loss),
        "val_auc": float(roc_auc(y, p)),
        "val_accuracy": float(np.mean((p > 0.5) == (y == 1))),
    }
