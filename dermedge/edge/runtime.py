"""Run a dermedge `.tflite` on the device: LiteRT, else tflite_runtime, else tensorflow.lite.

`EdgeModel` reads the embedded model card (contract, threshold, classes), feeds raw 0..255 pixels
(quantized with the input tensor's scale/zero-point for int8 models) and returns P(malignant).
TensorFlow is only imported when neither LiteRT nor tflite_runtime is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermedge import CLASSES
from dermedge.data.contract import InputContract, preprocess
from dermedge.edge.card import check_model_file, check_sealed, read_card, unsealed_warning

# key: (module to import, distribution name for its version)
RUNTIMES = {
    "ai_edge_litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite_runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
    "tensorflow": ("tensorflow", "tensorflow"),  # its tf.lite
}
RUNTIME_ENV = "DERMEDGE_EDGE_RUNTIME"  # force one of RUNTIMES (tests, debugging)


class EdgeError(RuntimeError):
    """A problem running a model on the device; the message says what to do about it."""


@dataclass(frozen=True)
class Runtime:
    """The TFLite interpreter implementation in use."""

    name: str  # e.g. "ai-edge-litert 2.3.0"
    interpreter: Any
    load_delegate: Any
    resolver_types: Any  # OpResolverType enum, or None


def _version(module_name: str, dist: str) -> str:
    """The package's __version__ (cheap), else its installed distribution's version."""
    version = getattr(sys.modules.get(module_name.split(".")[0]), "__version__", None)
    if version:
        return str(version)
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def _load(key: str) -> Runtime:
    """The Runtime for RUNTIMES[`key`]; ImportError when its module is not installed."""
    module_name, dist = RUNTIMES[key]
    module = importlib.import_module(module_name)
    if key == "tensorflow":
        lite = module.lite
        return Runtime(
            f"tensorflow {_version(module_name, dist)} (tf.lite)",
            lite.Interpreter,
            lite.experimental.load_delegate,
            getattr(lite.experimental, "OpResolverType", None),
        )
    return Runtime(
        f"{dist} {_version(module_name, dist)}",
        module.Interpreter,
        module.load_delegate,
        getattr(module, "OpResolverType", None),
    )


def load_runtime(prefer: str | None = None) -> Runtime:
    """The first TFLite interpreter installed, in RUNTIMES order (or `prefer` / $DERMEDGE_EDGE_RUNTIME)."""
    prefer = prefer or os.environ.get(RUNTIME_ENV) or None
    if prefer is not None and prefer not in RUNTIMES:
        raise EdgeError(f"unknown runtime {prefer!r}; choose one of {', '.join(RUNTIMES)}")
    for key in [prefer] if prefer else list(RUNTIMES):
        try:
            return _load(key)
        except ImportError:
            continue
    wanted = prefer or " or ".join(RUNTIMES)
    raise EdgeError(
        f"no TFLite interpreter found ({wanted}): pip install ai-edge-litert "
        "(or tflite-runtime on older Raspberry Pi OS with Python <= 3.11)"
    )


def default_threads() -> int:
    """Interpreter threads when not given: the CPU cores, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


@contextlib.contextmanager
def _native_info_filtered() -> Iterator[None]:
    """Drop the runtime's native "INFO: ..." lines (fd 2) while loading; pass anything else on."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            sys.stderr.write("".join(x for x in lines if not x.startswith("INFO: ")))


def _load_delegate(rt: Runtime, library: str) -> Any:
    """An external delegate, or EdgeError saying why it cannot be loaded."""
    path = Path(library)
    if not path.exists() and "/" in library:
        raise EdgeError(f"delegate library not found: {library}")
    name = str(path.resolve()) if path.exists() else library  # bare names: the linker's search
    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None  # LiteRT's Delegate.__del__
    try:  # fails noisily after a failed load; the hook hides that while the object is freed
        try:
            return rt.load_delegate(name)
        except (ValueError, OSError, RuntimeError) as e:
            reason = str(e).strip()
    finally:
        sys.unraisablehook = hook
    raise EdgeError(
        f"cannot load delegate {library}: {reason}. It must be a TFLite external delegate "
        "library for this device (e.g. libedgetpu.so.1 for a Coral Edge TPU, with a model "
        "compiled for it)"
    )


def _make_interpreter(rt: Runtime, path: Path, threads: int, delegate: str | None, xnnpack: bool):
    """An allocated interpreter (optional delegate, XNNPACK on/off); EdgeError if it fails."""
    delegates = [_load_delegate(rt, delegate)] if delegate else []
    kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
    if delegates:
        kwargs["experimental_delegates"] = delegates
    if not xnnpack and rt.resolver_types is not None:
        kwargs["experimental_op_resolver_type"] = (
            rt.resolver_types.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    try:
        with _native_info_filtered():
            interpreter = rt.interpreter(**kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EdgeError(f"cannot load {path} with {rt.name}: {str(e).strip()}") from e
    return interpreter


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (LiteRT's span several), or its type."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0][:300] if lines else type(e).__name__


def no_card_message(path: str | os.PathLike[str]) -> str:
    """What to pass when a .tflite has no embedded model card."""
    return (
        f"{path} has no embedded dermedge model card, so its input contract and decision "
        "threshold are unknown; pass them: --crop squash|center|fov --threshold P "
        "[--size N if not the input tensor's size] (Python: EdgeModel(path, "
        "contract=InputContract(...), threshold=P))"
    )


CANNOT_ASSESS = "cannot assess"  # the decision for a lesion unlike the training images: refer
DECISIONS = ("refer", CANNOT_ASSESS, "routine", "none")  # "none": no decision (not a lesion photo)
SENDS_ON = ("refer", CANNOT_ASSESS)  # decisions that send the patient on to a clinician


class EdgeModel:
    """A dermedge .tflite ready to classify: `.predict(pixels)` and `.classify(photo)`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int | None = None,
        delegate: str | os.PathLike[str] | None = None,
        contract: InputContract | None = None,
        threshold: float | None = None,
        xnnpack: bool = True,
        runtime: str | None = None,
        allow_unsealed: bool = False,
    ) -> None:
        """Check the file and its card, load an interpreter and check its input and output, and
        run it once (a model that fails when run is refused here, not on the first photo).
        `allow_unsealed`: run a model whose card records no readable file digest, with a loud
        warning (refused otherwise: a damaged digest must not switch the check off)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeError(f"model file not found: {self.path}")
        try:
            blob = self.path.read_bytes()
            check_model_file(blob, allow_unsealed)  # before any interpreter sees it
            self.card = read_card(blob, allow_unsealed)
            self.sealed = check_sealed(blob, allow_unsealed)
        except ValueError as e:
            raise EdgeError(f"{self.path}: {e}") from e
        except OSError as e:
            raise EdgeError(f"cannot read {self.path}: {e.strerror or e}") from e
        if self.card is not None and not self.sealed:
            print(f"WARNING: {unsealed_warning(self.path)}", file=sys.stderr, flush=True)
        self.contract = self._contract(contract)
        self.threshold = self._threshold(threshold)
        card = self.card or {}
        self.classes: list[str] = list(card.get("classes", CLASSES))
        positive = card.get("positive_class", self.classes[-1])
        if len(self.classes) != 2 or positive not in self.classes:
            raise EdgeError(
                f"{self.path}: the card's classes {self.classes} / {positive!r} are not binary"
            )
        self.positive = self.classes.index(positive)
        self.name: str = card.get("name", self.path.stem)
        rt = load_runtime(runtime)
        self.runtime = rt.name
        self.threads = threads or default_threads()
        self._interpreter = _make_interpreter(
            rt, self.path, self.threads, str(delegate) if delegate else None, xnnpack
        )
        try:
            self._io_details()
        except (ValueError, RuntimeError, IndexError) as e:  # names, shapes LiteRT cannot give
            raise EdgeError(f"cannot load {self.path}: {_first_line(e)}") from e
        self._lock = threading.Lock()
        self._check_input()
        self._check_output()
        self.guard = self._guard()
        self.head = self._head()
        self._try_once()

    def _try_once(self) -> None:
        """Run one blank image through the model: EdgeError now for one that fails when run."""
        size = self.contract.size
        with self._lock:
            self._invoke(np.zeros((1, size, size, 3), dtype=np.uint8))

    def _contract(self, contract: InputContract | None) -> InputContract:
        """The given contract, else the card's input contract; EdgeError when there is neither."""
        if contract is not None:
            return contract
        if self.card is None:
            raise EdgeError(no_card_message(self.path))
        if "input" not in self.card:
            raise EdgeError(f"{self.path}: the model card has no 'input' contract")
        return InputContract.from_dict(self.card["input"])

    def _threshold(self, threshold: float | None) -> float:
        """The given threshold, else the card's; EdgeError if there is none or it is not 0..1."""
        if threshold is None:
            if self.card is None:
                raise EdgeError(no_card_message(self.path))
            threshold = self.card.get("threshold")
            if threshold is None:
                raise EdgeError(f"{self.path}: the model card has no threshold; pass --threshold")
        if not 0.0 <= float(threshold) <= 1.0:
            raise EdgeError(f"threshold {threshold} is not a probability in 0..1")
        return float(threshold)

    def _check_input(self) -> None:
        """The input tensor must be NHWC RGB of the contract's size (resized when dynamic)."""
        shape, sig = self._input["shape"], self._input.get("shape_signature", self._input["shape"])
        size = self.contract.size
        if len(shape) != 4 or shape[3] != 3:
            raise EdgeError(f"{self.path}: expected an NHWC RGB input tensor, got shape {shape}")
        if tuple(shape[1:3]) == (size, size):
            return
        if sig[1] != -1 or sig[2] != -1:
            raise EdgeError(
                f"contract size {size} does not match the model input {shape[1]}x{shape[2]}; "
                f"drop --size or pass --size {shape[1]}"
            )
        self._resize(int(shape[0]), size)

    def _io_details(self) -> None:
        """Cache the details of the input, the output and the optional second (feature) output."""
        self._input = self._interpreter.get_input_details()[0]
        outputs = self._interpreter.get_output_details()
        self._output = outputs[0]
        self._features = outputs[1] if len(outputs) > 1 else None

    def _check_output(self) -> None:
        """One probability per image (or two softmax classes): anything else is refused."""
        shape = [int(v) for v in self._output["shape"]]
        per_image = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if per_image not in (1, 2):
            raise EdgeError(
                f"{self.path}: the model's output has {per_image} values per image "
                f"(shape {shape}); dermedge needs one P(malignant)"
            )
        if np.dtype(self._output["dtype"]).kind in "iu":
            scale, zero = self._output["quantization"]
            info = np.iinfo(self._output["dtype"])
            lo, hi = (info.min - zero) * (scale or 1.0), (info.max - zero) * (scale or 1.0)
            if lo < -0.01 or hi > 1.01:
                raise EdgeError(
                    f"{self.path}: the model's output spans {lo:.3g}..{hi:.3g}, not a "
                    "probability in 0..1"
                )

    def _feature_entry(self, key: str, kind: Any, what: str) -> Any:
        """The card's `key` entry read by `kind.from_card`, checked against the model's feature
        output (its dimension); None when the card has none. EdgeError when it does not fit."""
        spec = (self.card or {}).get(key)
        if not spec:
            return None
        try:
            entry = kind.from_card(spec)
        except ValueError as e:
            raise EdgeError(f"{self.path}: {e}") from e
        shape = self._features["shape"] if self._features is not None else None
        if shape is None or int(np.prod(shape[1:])) != entry.dim:
            raise EdgeError(
                f"{self.path}: the card has {what} of {entry.dim} features but the "
                "model has no such second output"
            )
        return entry

    def _head(self) -> Any:
        """The card's site head (`dermedge calibrate --adapt`); None for a model used with its
        own last layer."""
        from dermedge.edge.adapt import Head

        return self._feature_entry("head", Head, "a site head")

    def _guard(self) -> Any:
        """The card's unfamiliar-input guard, checked against the model's feature output."""
        from dermedge.edge.guard import Guard

        return self._feature_entry("guard", Guard, "a guard")

    def _resize(self, batch: int, size: int) -> None:
        """Resize the input tensor to (batch, size, size, 3), reallocate, refresh the details."""
        self._interpreter.resize_tensor_input(self._input["index"], [batch, size, size, 3])
        self._interpreter.allocate_tensors()
        self._io_details()

    @property
    def input_dtype(self) -> str:
        """The input tensor's dtype name: float32, uint8 or int8."""
        return np.dtype(self._input["dtype"]).name

    def _quantize(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels in the input tensor's dtype, quantized by its scale/zero point if integer."""
        dtype = np.dtype(self._input["dtype"])
        if dtype.kind == "f":
            return pixels.astype(dtype)
        scale, zero = self._input["quantization"]
        if scale == 1.0 and zero == 0 and dtype == np.uint8:
            return pixels
        if not scale:
            raise EdgeError(f"{self.path}: {dtype} input tensor without quantization parameters")
        info = np.iinfo(dtype)
        q = np.round(pixels.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(dtype)

    @staticmethod
    def _dequantize(out: np.ndarray, details: dict[str, Any]) -> np.ndarray:
        """An output tensor as float64, dequantized with its scale and zero point if integer."""
        if np.dtype(out.dtype).kind == "f":
            return out.astype(np.float64)
        scale, zero = details["quantization"]
        return (out.astype(np.float64) - zero) * (scale or 1.0)

    def _invoke(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(raw output, features or None) of a batch, dequantized."""
        n = batch.shape[0]
        if n != self._input["shape"][0]:
            sig = self._input.get("shape_signature", self._input["shape"])
            if sig[0] != -1 and n > 1:
                parts = [self._invoke(batch[i : i + 1]) for i in range(n)]
                each = [f for _, f in parts if f is not None]
                return np.concatenate([o for o, _ in parts]), np.concatenate(each) if each else None
            self._resize(n, self.contract.size)
        try:
            self._interpreter.set_tensor(self._input["index"], self._quantize(batch))
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output["index"])
            f = self._features
            feats = (
                None if f is None else self._dequantize(self._interpreter.get_tensor(f["index"]), f)
            )
        except (RuntimeError, ValueError) as e:  # a kernel that fails when run, as LiteRT says
            raise EdgeError(f"{self.path}: the model failed when run: {_first_line(e)}") from e
        return self._dequantize(raw, self._output), feats

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """P(malignant) for uint8 RGB input of shape (N, size, size, 3) or (size, size, 3)."""
        return self.predict_features(pixels)[0]

    def predict_features(
        self, pixels: np.ndarray, adapted: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(P(malignant), penultimate features or None for a model without a feature output).
        With a site head in the card, P(malignant) is the head's (`adapted=False`: the model's
        own output, as shipped)."""
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        size = self.contract.size
        if x.dtype != np.uint8 or x.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected uint8 (N, {size}, {size}, 3) pixels, got {x.dtype} {x.shape}"
            )
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float64), None
        with self._lock:
            out, feats = self._invoke(x)
        out = out.reshape(x.shape[0], -1)
        if not np.isfinite(out).all() or out.min() < -1e-3 or out.max() > 1 + 1e-3:
            raise EdgeError(
                f"{self.path}: the model gave {out.min():.4g}..{out.max():.4g}, not a "
                "probability in 0..1"
            )
        column = self.positive if out.shape[1] > 1 else 0
        prob = np.clip(out[:, column], 0.0, 1.0)
        feats = None if feats is None else feats.reshape(x.shape[0], -1)
        if adapted and self.head is not None and feats is not None:
            prob = self.head.prob(feats, prob)
        return prob, feats

    def decide(
        self, prob: float, features: np.ndarray | None = None, pixels: np.ndarray | None = None
    ) -> dict[str, Any]:
        """prob, label and decision at the threshold (the positive label exactly when the decision
        is refer, as on the phone page). With a guard, its score and `unfamiliar`; a flagged
        picture never gets `routine`: a lesion unlike the training images gets "cannot assess"
        (refer: its prob is not to be trusted either way), and only a flagged picture without
        skin colours (`pixels` given; guard.assess) is "not a lesion photo", no decision."""
        refer = prob >= self.threshold
        out: dict[str, Any] = {
            "prob": float(prob),
            "label": self.classes[self.positive if refer else 1 - self.positive],
            "decision": "refer" if refer else "routine",
        }
        if self.guard is not None and features is not None:
            from dermedge.edge import guard as g

            score = float(self.guard.score(features)[0])
            out["guard_score"] = round(score, 4)
            out["unfamiliar"] = score > self.guard.cutoff
            verdict = g.assess(out["unfamiliar"], pixels)
            if verdict == "not_lesion":
                out.update(prob=None, label="none", decision="none", reason=g.NOT_A_LESION)
            elif verdict == "lesion":  # its prob is not to be trusted either way: send it on
                out.update(label="unknown", decision=CANNOT_ASSESS, reason=g.CANNOT_ASSESS)
        return out

    def classify(self, source: Any) -> dict[str, Any]:
        """Classify a photo (path, bytes, PIL image or HxWx3 uint8 RGB array) per the contract.
        A blank or uniform photo gets no decision (decision "none" and the reason).

        Raises dermedge.data.contract.ImageError with the reason for an unusable image.
        """
        from dermedge.edge.photo import blank_reason

        pixels = preprocess(source, self.contract)
        blank = blank_reason(pixels)
        if blank:
            return {"prob": None, "label": "none", "decision": "none", "reason": blank}
        prob, feats = self.predict_features(pixels)
        return self.decide(float(prob[0]), feats, pixels)
