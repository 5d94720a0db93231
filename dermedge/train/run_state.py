"""A run's state on disk while it trains: per-epoch history, best weights on val AUC, a full
checkpoint with `state.json` after every epoch (so a killed run resumes), and early stopping.
Every file is written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dermedge.data.io import atomic_write_text
from dermedge.metrics import clean_json
from dermedge.train import evaluate as ev

STATE = "state.json"


def log(msg: str) -> None:
    """One progress line on stdout, prefixed like every dermedge message."""
    print(f"[dermedge] {msg}", flush=True)


def save_keras(model: Any, path: Path) -> None:
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


def load_weights(model: Any, path: Path) -> None:
    """Load model weights saved by `save_keras`; the optimizer slots they carry are not needed."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
        model.load_weights(path)


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` atomically as indented JSON, made JSON-safe by `clean_json`."""
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


class RunState:
    """Per-epoch bookkeeping of a phase: history row, best weights on val AUC, a full checkpoint
    with state.json, and early stopping. A Keras callback (made by `state_callback`)."""

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
        log(
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
            log(f"early stop: val AUC has not improved for {self.patience} epochs")
            self.state["stopped_early"].append(self.phase["name"])
            model.stop_training = True
        if last or model.stop_training:
            self.state["phases_done"] = self.phase_idx + 1
        self.state["wall_seconds"] = self.state.get("wall_before", 0.0) + time.time() - self.t_start
        if self.chief:
            self._checkpoint(model)

    def _history_row(self, model: Any, epoch: int, logs: dict[str, Any]) -> dict[str, Any]:
        """The epoch's history row: run/phase epoch, the Keras logs, learning rate, seconds."""
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
        """Save the weights when val AUC beats the best so far; else count a stalled epoch."""
        best = self.state.get("best_val_auc")
        if auc is not None and np.isfinite(auc) and (best is None or auc > best + 1e-6):
            self.state.update(best_val_auc=float(auc), best_epoch=epoch, wait=0)
            if self.chief:
                save_keras(model, self.ckpt / "best.weights.h5")
        else:
            self.state["wait"] = self.state.get("wait", 0) + 1

    def _checkpoint(self, model: Any) -> None:
        """epoch-N.keras, then state.json naming it, then the previous checkpoint is removed."""
        name = f"epoch-{self.state['epochs_done']}.keras"
        save_keras(model, self.ckpt / name)
        old = self.state.get("last_checkpoint")
        self.state["last_checkpoint"] = name
        write_state(self.ckpt, self.state)
        if old and old != name:
            with contextlib.suppress(OSError):
                (self.ckpt / old).unlink()
        write_history(self.state["history"], self.run_dir)


def state_callback(run_state: RunState) -> Any:
    """`run_state` as a Keras callback (Keras is imported only when training)."""
    import keras

    class _Callback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            """Log the epoch and start its clock (`RunState.begin`)."""
            run_state.begin(epoch)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            """Record, checkpoint and maybe stop early (`RunState.end`)."""
            run_state.end(self.model, epoch, dict(logs or {}))

    return _Callback()


def write_state(ckpt: Path, state: dict[str, Any]) -> None:
    """Write `state.json` into `ckpt`, without the in-memory `wall_before`."""
    write_json(ckpt / STATE, {k: v for k, v in state.items() if k != "wall_before"})
