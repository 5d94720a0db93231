"""A training run's configuration: `TrainConfig` (every default has its home here; the CLI reads
them), the names each choice may take, and `check_config`, which refuses a config before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermedge.metrics import THRESHOLD_POOLS

STRATEGIES = ("default", "mirrored", "multiworker")

BALANCES = ("class", "source")

CACHES = ("auto", "memory", "stream")

STREAM_ABOVE_BYTES = 2 * 2**30  # cache "auto" streams a train split whose pixels exceed this


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
    margin: float = 0.0  # contract.margin (add_margin); old config.json files mean 0
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
    augmentation: str = "basic"  # basic | field | none | scale | field-scale (choices.AUGMENTS)
    # metrics.THRESHOLD_POOLS: the pooled target and >= 0.90 in every val source (pooled-floor;
    # the shipped default's), the target in every source (worst-source), or pooled only
    threshold_pool: str = "pooled-floor"
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
    source_by: str | None = None  # a dataset folder's metadata column naming sub-sources
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
        input_contract(cfg.arch, cfg.img_size, cfg.crop, cfg.color_constancy, cfg.margin)
    except ValueError as e:
        raise TrainError(str(e)) from e
    if not any(ph["epochs"] > 0 for ph in cfg.phases()):
        raise TrainError("nothing to train: every phase has 0 epochs")
    if not Path(cfg.data).exists():
        raise TrainError(f"--data {cfg.data}: no such file or folder")
    if cfg.weights not in (None, "none", "imagenet") and not Path(cfg.weights).is_file():
        raise TrainError(f"--weights {cfg.weights}: no such file")
