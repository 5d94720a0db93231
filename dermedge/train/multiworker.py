"""The epoch loop for MultiWorkerMirroredStrategy with several workers, where Keras 3's `fit`
cannot run: it reduces its per-step logs with `strategy.reduce("MEAN", v, axis=0)`, which fails on
scalars across workers (keras-team/keras#20585, open in Keras 3.15). This loop is what `fit` does
with TF's own engine: Keras's `train_step` in `strategy.run` under `tf.function`, the logs reduced
across workers as scalars, and validation on the whole val split (the same on every worker).
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
    """val_loss, val_auc and val_accuracy on the whole validation split."""
    from dermedge.train.evaluate import roc_auc
    from dermedge.train.trainer import predict

    p = np.clip(predict(model, val.x, batch), 1e-7, 1 - 1e-7)
    y = np.asarray(val.y, dtype=np.float64)
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {
        "val_loss": loss,
        "val_auc": float(roc_auc(y, p)),
        "val_accuracy": float(np.mean((p >= 0.5) == (y == 1))),
    }
