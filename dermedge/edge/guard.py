"""The unfamiliar-input guard: how far a photo's features are from the training images.

A classifier answers for any picture (a face, a page, a wall). A guarded model has a second output,
its penultimate features, and the card holds class means and a shared covariance fitted on the
training split (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
samples"), kept small as probabilistic PCA: the top `k` eigenvectors with their variances plus
one variance for the rest. The score is the Mahalanobis distance to the nearest class mean per
feature dimension; a photo scoring above the cut-off (chosen so that 95% of validation images
pass) is flagged "unlike the training images". numpy only: the edge install and the phone page
(a port in web/src/guard.js) compute the same number.

A flag never hides a lesion. A flagged picture is "not a lesion photo" (no decision) only when it
also lacks the colours of skin and pigment (`skin_share` below `MIN_SKIN_SHARE`: grey pages,
objects, blue or green scenes); a flagged picture with skin colours is a lesion unlike the
training images, and it is sent on ("cannot assess": refer), never called routine. On Derm7pt,
ISIC 2017 and ISIC 2020 no malignant photo is both flagged and under the skin share (0 of 1,282).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

KIND = "mahalanobis-ppca/1"
PASS_RATE = 0.95  # of validation images that pass: the cut-off
COMPONENTS = 32
MESSAGE = "unlike the training images: a less reliable result"
MIN_SKIN_SHARE = (
    0.05  # share of skin/pigment-coloured pixels below which a flagged picture is no lesion
)
NOT_A_LESION = "not a lesion photo: unlike the training images and without skin colours"
CANNOT_ASSESS = "cannot assess: a lesion unlike the training images; refer for examination"


def skin_share(pixels: np.ndarray) -> float:
    """Share of a picture's pixels with the colours of skin and pigment: lit (max channel >= 31),
    saturated (>= 0.10) and warm-hued (red the largest channel). Dermoscopy is warm; pages, grey
    scenes, sky and grass are not. Integer arithmetic, so the phone page (guard.js) agrees exactly."""
    x = np.asarray(pixels, dtype=np.int32).reshape(-1, 3)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    warm = (r >= g) & (r >= b) & (hi >= 31) & (10 * (hi - lo) >= hi)
    return float(warm.mean()) if x.size else 0.0


def assess(unfamiliar: bool, pixels: np.ndarray | None) -> str:
    """What a guard flag means for one picture: "familiar", "lesion" (unlike the training images
    but skin-coloured, or its pixels unknown: sent on) or "not_lesion" (no decision)."""
    if not unfamiliar:
        return "familiar"
    if pixels is not None and skin_share(pixels) < MIN_SKIN_SHARE:
        return "not_lesion"
    return "lesion"


def _b64(a: np.ndarray) -> str:
    """An array as base64 of its little-endian float32 bytes, as the card stores it."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(s: str, shape: tuple[int, ...]) -> np.ndarray:
    """A base64 float32 card array as float64 of `shape`; ValueError when the size differs."""
    a = np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float64)
    if a.size != int(np.prod(shape)):
        raise ValueError(f"guard array of {a.size} values, expected shape {shape}")
    return a.reshape(shape)


@dataclass
class Guard:
    """Class means (C, d), top components (k, d) with their variances (k,), the residual
    variance, and the cut-off on the score."""

    means: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float
    cutoff: float

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, per feature dimension."""
        f = np.asarray(features, dtype=np.float64).reshape(-1, self.dim)
        best = np.full(f.shape[0], np.inf)
        for mu in self.means:
            r = f - mu
            proj = r @ self.components.T
            inside = (proj**2 / self.variances).sum(axis=1)
            rest = np.maximum((r**2).sum(axis=1) - (proj**2).sum(axis=1), 0.0)
            best = np.minimum(best, inside + rest / self.residual_variance)
        return best / self.dim

    def unfamiliar(self, features: np.ndarray) -> np.ndarray:
        """True for each feature row scoring above the cut-off (unlike the training images)."""
        return self.score(features) > self.cutoff

    def to_card(self) -> dict[str, Any]:
        """The guard as the card's `guard` entry, its arrays as base64 float32."""
        k, d = self.components.shape
        return {
            "kind": KIND,
            "dim": d,
            "classes": int(self.means.shape[0]),
            "k": k,
            "means": _b64(self.means),
            "components": _b64(self.components),
            "variances": _b64(self.variances),
            "residual_variance": float(self.residual_variance),
            "cutoff": float(self.cutoff),
            "message": MESSAGE,
        }

    @classmethod
    def from_card(cls, g: dict[str, Any]) -> Guard:
        """The guard a card describes; ValueError when it is malformed."""
        if not isinstance(g, dict) or g.get("kind") != KIND:
            raise ValueError(f"unknown guard kind {g.get('kind') if isinstance(g, dict) else g!r}")
        try:
            d, c, k = int(g["dim"]), int(g["classes"]), int(g["k"])
            guard = cls(
                _unb64(g["means"], (c, d)),
                _unb64(g["components"], (k, d)),
                _unb64(g["variances"], (k,)),
                float(g["residual_variance"]),
                float(g["cutoff"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed guard in the model card: {e}") from e
        if not (guard.variances > 0).all() or not guard.residual_variance > 0:
            raise ValueError("malformed guard in the model card: non-positive variances")
        return guard


def fit(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    k: int = COMPONENTS,
    pass_rate: float = PASS_RATE,
) -> Guard:
    """Class means and shared within-class covariance on the training features (PPCA with k
    components); the cut-off passes `pass_rate` of the validation features."""
    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels).astype(int).ravel()
    classes = sorted(set(y.tolist()))
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    cov = centred.T @ centred / max(1, x.shape[0] - len(classes))
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
    k = min(k, x.shape[1] - 1)
    floor = max(float(eigval[0]) * 1e-6, 1e-12)
    rest = float(eigval[k:].mean()) if eigval[k:].size else floor
    guard = Guard(
        means, eigvec[:, :k].T.copy(), np.maximum(eigval[:k], floor), max(rest, floor), 0.0
    )
    guard = Guard.from_card(guard.to_card())  # score as deployed: float32 parameters
    # the smallest score that at least `pass_rate` of the validation images do not exceed
    guard.cutoff = float(np.quantile(guard.score(val_features), pass_rate, method="higher"))
    return guard
