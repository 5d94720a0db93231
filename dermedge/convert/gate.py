"""The accuracy gate: a TFLite variant against the Keras model on the same test pixels.

TensorFlow-free (numpy and `dermedge.metrics`), so it can be tested and reused
without a converter. Besides the per-variant tolerances it checks that the model card's input
contract is the one the model was trained with: the normalization written in the card against
the model's own `normalize` layer, the input size against the model's input, and the Keras model
fed through the card's contract against the test metrics recorded at training time. A wrong
contract does not show up as a TFLite-vs-Keras drop (both see the same wrong pixels), so it has
its own checks; each failure fails every variant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dermedge.metrics import binary_metrics
from dermedge.runs import format_table

# (report key, binary_metrics key, label)
REPORTED = (
    ("auc", "roc_auc", "AUC"),
    ("accuracy", "accuracy", "accuracy"),
    ("sensitivity", "sensitivity", "sensitivity"),
    ("specificity", "specificity", "specificity"),
)


@dataclass(frozen=True)
class Tolerances:
    """How much a variant may lose against the Keras model (fractions: 0.01 = 1 point)."""

    max_auc_drop: float = 0.01
    max_acc_drop: float = 0.01
    max_sens_drop: float = 0.01
    min_agreement: float = 0.98

    def __post_init__(self) -> None:
        """ValueError, naming the flag, for a drop or agreement limit outside 0..1."""
        for k in ("max_auc_drop", "max_acc_drop", "max_sens_drop"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"--{k.replace('_', '-')} must be in 0..1, got {getattr(self, k)}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"--min-agreement must be in 0..1, got {self.min_agreement}")

    def to_dict(self) -> dict[str, float]:
        """The tolerances as a plain dict."""
        return asdict(self)


def metrics(y: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """AUC, accuracy, sensitivity, specificity at `threshold` (plus the confusion counts)."""
    m = binary_metrics(y, prob, threshold)
    out = {key: m[src] for key, src, _ in REPORTED}
    out.update({k: m[k] for k in ("tp", "fp", "tn", "fn", "n")})
    return out


def compare(
    y: Any, p_ref: Any, p_var: Any, threshold: float, var_threshold: float | None = None
) -> dict[str, Any]:
    """The variant's metrics (at its own threshold when given), its decision agreement with the
    reference (each at its threshold) and the largest |dp|."""
    vthr = threshold if var_threshold is None else var_threshold
    p_ref = np.asarray(p_ref, dtype=np.float64).ravel()
    p_var = np.asarray(p_var, dtype=np.float64).ravel()
    if p_ref.shape != p_var.shape:
        raise ValueError(f"{p_ref.size} reference probabilities but {p_var.size} from the variant")
    out = metrics(y, p_var, vthr)
    out["threshold"] = vthr
    out["agreement"] = (
        float(np.mean((p_ref >= threshold) == (p_var >= vthr))) if p_ref.size else 1.0
    )
    out["max_abs_dp"] = float(np.max(np.abs(p_ref - p_var))) if p_ref.size else 0.0
    out["mean_abs_dp"] = float(np.mean(np.abs(p_ref - p_var))) if p_ref.size else 0.0
    return out


def output_step(prob: Any, threshold: float) -> float | None:
    """Gap between the distinct outputs just below and at/above the threshold (None if one side is empty).

    For int8 this is the probability grid the quantized logit allows near the operating point:
    a case closer to the threshold than about one step can change its decision.
    """
    u = np.unique(np.asarray(prob, dtype=np.float64))
    below, above = u[u < threshold], u[u >= threshold]
    if not below.size or not above.size:
        return None
    return float(above.min() - below.max())


def _drop(ref: float, var: float) -> float:
    """How much the variant lost (`ref - var`); NaN on one side only is an infinite drop."""
    if math.isnan(ref) or math.isnan(var):
        return 0.0 if math.isnan(ref) and math.isnan(var) else math.inf
    return ref - var


def judge(ref: dict[str, Any], var: dict[str, Any], tol: Tolerances) -> list[str]:
    """One line per tolerance the variant is outside of; empty when it passes."""
    failures = []
    for key, limit, label in (
        ("auc", tol.max_auc_drop, "AUC"),
        ("accuracy", tol.max_acc_drop, "accuracy"),
        ("sensitivity", tol.max_sens_drop, "sensitivity"),
    ):
        drop = _drop(ref[key], var[key])
        if drop > limit + 1e-12:
            failures.append(
                f"{label} dropped {drop:.4f} ({ref[key]:.4f} -> {var[key]:.4f}), "
                f"more than the allowed {limit:.4f} by {drop - limit:.4f}"
            )
    if var["agreement"] < tol.min_agreement - 1e-12:
        n = var.get("n") or 0
        disagree = round((1 - var["agreement"]) * n)
        failures.append(
            f"agreement with Keras {var['agreement']:.4f} ({disagree} of {n} decisions "
            f"differ) is below the required {tol.min_agreement:.4f} "
            f"by {tol.min_agreement - var['agreement']:.4f}"
        )
    return failures


# --- the card's input contract against the model -----------------------------------------------


def check_normalization(card_input: dict[str, Any], layer_norm: dict[str, Any] | None) -> list[str]:
    """The card's mean/std against the model's `normalize` layer ((x - mean) / std per channel)."""
    if layer_norm is None:
        return []
    mean = np.broadcast_to(np.asarray(card_input.get("mean", 127.0), dtype=np.float64), (3,))
    std = np.broadcast_to(np.asarray(card_input.get("std", 128.0), dtype=np.float64), (3,))
    lm = np.broadcast_to(np.asarray(layer_norm["mean"], dtype=np.float64).ravel(), (3,))
    ls = np.broadcast_to(np.asarray(layer_norm["std"], dtype=np.float64).ravel(), (3,))
    if np.allclose(mean, lm, rtol=1e-3, atol=0.05) and np.allclose(std, ls, rtol=1e-3, atol=1e-3):
        return []

    def fmt(a: np.ndarray) -> str:
        """One number when the three channels agree, else the list of all three."""
        same = np.allclose(a, a[0])
        return f"{a[0]:g}" if same else "[" + ", ".join(f"{v:g}" for v in a) + "]"

    return [
        f"input contract mismatch: the card says the model normalizes with mean={fmt(mean)} "
        f"std={fmt(std)}, but its `{layer_norm['layer']}` layer computes (x - {fmt(lm)}) / "
        f"{fmt(ls)}; the card does not describe this model (fix the card's input.mean/std, "
        "or convert the run the model came from)"
    ]


def check_size(card_size: int, model_size: int | None) -> list[str]:
    """A mismatch line when the card's input size is not the model's, else nothing."""
    if model_size is None or int(card_size) == int(model_size):
        return []
    return [
        f"input contract mismatch: the card says {card_size}px input, the model takes "
        f"{model_size}x{model_size}; the card does not describe this model"
    ]


def check_recorded(
    ref: dict[str, Any], recorded: dict[str, Any] | None, tol: Tolerances
) -> list[str]:
    """The Keras model fed through the card's contract against the test metrics of training.

    Training measured them on the same test images with the contract it trained with, so a
    different number here means the card's contract (crop, size, resize...) is not that one.
    """
    if not recorded:
        return []
    failures = []
    for key, src, limit in (
        ("auc", "roc_auc", tol.max_auc_drop),
        ("accuracy", "accuracy", tol.max_acc_drop),
    ):
        was = recorded.get(src)
        if was is None or ref.get(key) is None or math.isnan(ref[key]):
            continue
        if abs(float(was) - ref[key]) > limit + 1e-9:
            failures.append(
                f"input contract mismatch: the Keras model scores {key} {ref[key]:.4f} on the test "
                f"split through the card's input contract, but training recorded {float(was):.4f} "
                f"on the same images; the card's crop/size/resize is probably not what the model "
                "was trained with"
            )
    return failures


# --- advice and the report ------------------------------------------------------------------------


def advice(
    variant: str,
    failures: Sequence[str],
    calib_images: int | None = None,
    step: float | None = None,
) -> str:
    """What to try when a variant fails (a phrase to follow "try: ")."""
    if any(f.startswith("input contract mismatch") for f in failures):
        return (
            "fixing the model card's input contract (input.size/crop/mean/std must be what the "
            "model was trained with), then convert again; no quantization setting fixes this"
        )
    if variant == "int8":
        used = f"; used {calib_images}" if calib_images else ""
        grid = ""
        if step is not None and step > 0.01:
            grid = (
                f"Near the threshold int8 probabilities move in steps of {step:.3f} (the "
                "quantized logit), so cases within about a step of it can change decision; "
                "if the AUC held, re-choosing the int8 variant's threshold on the validation "
                "split (same sensitivity target) may be the fix. Or "
            )
        return (
            grid + f"more calibration images (--calib-images 1000{used}); per-channel weight "
            "quantization (on by default; per-tensor loses more); float fallback "
            "(--allow-float-fallback: ops without an int8 kernel stay float - no longer fully "
            "integer), or ship fp16/dynamic for this device. An int8 drop of more than about "
            "a point on this task usually means a preprocessing mismatch: check that "
            "training, calibration and the card use the same input contract"
        )
    if variant == "fp32":
        return (
            "checking the input contract and layers that behave differently at inference: "
            "fp32 should match Keras to ~1e-5, so a failure means the converted graph or the "
            "pixels the edge runtime feeds differ from Keras"
        )
    return (
        f"comparing with fp32 and checking the input contract ({variant} keeps float "
        "activations and rarely loses this much); ship fp16/fp32 instead if it persists"
    )


COLUMNS = (
    "variant",
    "size",
    "threshold",
    "AUC",
    "acc",
    "sens",
    "spec",
    "agreement",
    "max abs Δp",
    "verdict",
)


def human_size(n: int | None) -> str:
    """A byte count in MB, KB (binary, 2 decimals) or B, or '-' for None."""
    if n is None:
        return "-"
    for unit, div in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[object]]:
    """The gate rows as the cells of COLUMNS, missing or NaN numbers shown as '-'."""

    def num(v: Any) -> object:
        """'-' for a missing or NaN value, else the value as a float."""
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    return [
        [
            r["variant"],
            human_size(r.get("size_bytes")),
            num(r.get("threshold")),
            num(r.get("auc")),
            num(r.get("accuracy")),
            num(r.get("sensitivity")),
            num(r.get("specificity")),
            num(r.get("agreement")),
            num(r.get("max_abs_dp")),
            r["verdict"],
        ]
        for r in rows
    ]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The gate rows as a markdown table under the COLUMNS headers."""
    return format_table(table_rows(rows), COLUMNS)
