"""A benchmark worker: one process that loads one variant at one thread count and runs it.

    python -m dermedge.benchmark --worker SPEC_JSON

The parent talks to it in JSON lines (stdin commands, replies on the original stdout; everything
the libraries print goes to stderr). Only this variant's runtime is imported, so the process's
peak resident memory (VmHWM, see `_maxrss_kb`) is what a device pays to load and run it.

Commands (one JSON object a line):
- {"cmd": "run", "n": k} -> {"times": [s, ...]}: k single-image inferences, each timed;
- {"cmd": "stats"} -> {"maxrss_kb", "cpu_s", "tensorflow_loaded"}; "quit": the same, then exit;
- {"cmd": "accuracy", "images": npy, "batch": b} -> {"probs": [...], "seconds": s};
- {"cmd": "peak", "dtype": "fp32"|"int8", "shape": [m, k, n], "path": p, "n": k} ->
  {"times": [...]}: an m x k by k x n matrix multiply through the same runtime and threads.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np


def _maxrss_kb() -> int:
    """Peak resident set size of this process in KiB.

    Linux: `VmHWM` of /proc/self/status, the high-water mark of this address space. Not
    `ru_maxrss`: Linux carries the pre-exec RSS of the forked parent into the child's
    `ru_maxrss`, so every worker would report at least the benchmark's own footprint.
    Elsewhere `ru_maxrss` (KiB; bytes on macOS).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss // 1024 if sys.platform == "darwin" else rss)


def _cpu_s() -> float:
    """User plus system CPU seconds this process has used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return float(r.ru_utime + r.ru_stime)


class LiteRT:
    """A .tflite under the edge runtime (`dermedge.edge.runtime.EdgeModel`)."""

    dtypes = ("fp32", "int8")

    def __init__(self, spec: dict[str, Any]) -> None:
        """Load the .tflite as an EdgeModel with the spec's threads, contract and threshold."""
        from dermedge.data.contract import InputContract
        from dermedge.edge.runtime import EdgeModel

        contract = InputContract.from_dict(spec["contract"]) if spec.get("contract") else None
        self.model = EdgeModel(
            spec["path"],
            threads=spec["threads"],
            contract=contract,
            threshold=spec.get("threshold"),
        )
        self.runtime = self.model.runtime
        self.threads = int(spec["threads"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(malignant) of a uint8 batch through the edge runtime's EdgeModel."""
        return self.model.predict(x)

    def peak(self, dtype: str, shape: tuple[int, int, int], path: str | None) -> Callable[[], Any]:
        """The peak FULLY_CONNECTED .tflite (written by the parent) under the same interpreter
        implementation, thread count and default XNNPACK delegate as the variant."""
        from dermedge.edge.runtime import load_runtime

        assert path, "the LiteRT peak needs the model file"
        it = load_runtime().interpreter(model_path=path, num_threads=self.threads)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        x = np.random.default_rng(0).integers(-20, 20, size=d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], x)
        return it.invoke


class Keras:
    """The Keras model under TensorFlow, called through a traced tf.function (no predict() loop)."""

    dtypes = ("fp32",)

    def __init__(self, spec: dict[str, Any]) -> None:
        """Load the model with the spec's intra-op threads and trace its call as a tf.function."""
        import tensorflow as tf

        threads = int(spec["threads"])
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        self.tf = tf
        self.model = keras.models.load_model(spec["path"], compile=False)
        shape = tuple(self.model.inputs[0].shape[1:])
        self.fn = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec((None, *shape), tf.float32)],
        )
        self.runtime = f"tensorflow {tf.__version__} / keras {keras.__version__}"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(malignant) of a batch: the model's last output column as float64, clipped to 0..1."""
        out = self.fn(self.tf.constant(x.astype(np.float32))).numpy()
        return np.clip(out.reshape(out.shape[0], -1)[:, -1].astype(np.float64), 0.0, 1.0)

    def peak(self, dtype: str, shape: tuple[int, int, int], path: str | None) -> Callable[[], Any]:
        """An fp32 (m, k) x (k, n) tf.linalg.matmul with this process's thread settings."""
        tf = self.tf
        m, k, n = shape
        rng = np.random.default_rng(0)
        a = tf.constant(rng.standard_normal((m, k)).astype(np.float32))
        b = tf.constant(rng.standard_normal((k, n)).astype(np.float32))
        fn = tf.function(lambda: tf.linalg.matmul(a, b))
        return lambda: fn().numpy()


class Onnx:
    """An .onnx under ONNX Runtime (CPU provider, spinning off so idle workers leave the CPU)."""

    dtypes = ("fp32", "int8")

    def __init__(self, spec: dict[str, Any]) -> None:
        """Open a session on the spec's model; keep its input and any quantized-I/O parameters."""
        import onnxruntime as ort

        self.ort = ort
        self.threads = int(spec["threads"])
        self.sess = self._session(spec["path"])
        self.input = self.sess.get_inputs()[0]
        self.in_q = spec.get("input_quant")  # [scale, zero_point, dtype] for quantized I/O
        self.out_q = spec.get("output_quant")
        self.runtime = f"onnxruntime {ort.__version__}"

    def _session(self, model: str | bytes) -> Any:
        """A CPU session on a model path or bytes: the variant's threads, sequential, no spin."""
        ort = self.ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(malignant) of a batch, (de)quantizing the input and output for quantized I/O."""
        if self.in_q:
            scale, zero, dtype = self.in_q
            info = np.iinfo(dtype)
            feed = np.clip(np.round(x.astype(np.float32) / scale + zero), info.min, info.max)
            feed = feed.astype(dtype)
        else:
            feed = x.astype(np.float32)
        out = self.sess.run(None, {self.input.name: feed})[0]
        out = out.reshape(out.shape[0], -1)[:, -1].astype(np.float64)
        if self.out_q:
            out = (out - self.out_q[1]) * self.out_q[0]
        return np.clip(out, 0.0, 1.0)

    def peak(self, dtype: str, shape: tuple[int, int, int], path: str | None) -> Callable[[], Any]:
        """MatMul (fp32) or QLinearMatMul (uint8 x int8, what quantized graphs fuse into) built
        with onnx.helper, in a session with the variant's settings."""
        from onnx import TensorProto, helper, numpy_helper

        m, k, n = shape
        rng = np.random.default_rng(0)
        if dtype == "fp32":
            a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
            inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
            node = helper.make_node("MatMul", ["a", "w"], ["y"])
            x: np.ndarray = rng.standard_normal((m, k)).astype(np.float32)
        else:
            a_type, y_type = TensorProto.UINT8, TensorProto.UINT8
            scalars = {
                "a_scale": np.float32(0.05),
                "a_zp": np.uint8(128),
                "w_scale": np.float32(0.01),
                "w_zp": np.int8(0),
                "y_scale": np.float32(0.5),
                "y_zp": np.uint8(128),
            }
            inits = [numpy_helper.from_array(np.array(v), name) for name, v in scalars.items()]
            inits.append(
                numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w")
            )
            node = helper.make_node(
                "QLinearMatMul",
                ["a", "a_scale", "a_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"],
                ["y"],
            )
            x = rng.integers(100, 156, (m, k), dtype=np.uint8)
        graph = helper.make_graph(
            [node],
            "peak",
            [helper.make_tensor_value_info("a", a_type, [m, k])],
            [helper.make_tensor_value_info("y", y_type, [m, n])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = min(model.ir_version, 8)
        sess = self._session(model.SerializeToString())
        return lambda: sess.run(None, {"a": x})


BACKENDS = {"litert": LiteRT, "keras": Keras, "onnx": Onnx}


def _import_litert() -> None:
    """Import the interpreter module the edge runtime picks, so its start-up is timed apart."""
    from dermedge.edge.runtime import load_runtime

    load_runtime()  # imports the interpreter module the runtime picks (LiteRT, tflite_runtime..)


def _import(*modules: str) -> Callable[[], None]:
    """A callable that imports `modules`, so a runtime's start-up is timed apart from its load."""

    def run() -> None:
        """Import each of the modules in turn."""
        for m in modules:
            importlib.import_module(m)

    return run


IMPORTS: dict[str, Callable[[], None]] = {
    "litert": _import_litert,
    "keras": _import("tensorflow", "keras"),
    "onnx": _import("onnxruntime"),
}


def _timed(fn: Any, n: int) -> list[float]:
    """Seconds taken by each of `n` calls of `fn`."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _error_text(e: BaseException) -> str:
    """`Type: message` of an exception, cut to 500 characters for a reply."""
    return f"{type(e).__name__}: {e}".strip()[:500]


def _load(spec: dict[str, Any]) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """The variant loaded, its sample images, and the hello reply: runtime, the seconds taken by
    the runtime's imports, the load and the first inference, and the resident memory then."""
    backend_cls: Any = BACKENDS[spec["backend"]]
    samples = np.load(spec["samples"])
    t0 = time.perf_counter()
    IMPORTS[spec["backend"]]()  # the runtime's own start-up (imports), timed apart
    t1 = time.perf_counter()
    model = backend_cls(spec)
    t2 = time.perf_counter()
    model.predict(samples[:1])
    t3 = time.perf_counter()
    hello = {
        "ok": True,
        "runtime": model.runtime,
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "first_s": t3 - t2,
        "rss_loaded_kb": _maxrss_kb(),
    }
    return model, samples, hello


class Session:
    """A loaded variant answering the parent's commands; `run` cycles through the samples."""

    def __init__(self, spec: dict[str, Any], model: Any, samples: np.ndarray) -> None:
        self.backend, self.model, self.samples = spec["backend"], model, samples
        self.turn = 1  # the next sample (0 went to the first inference)

    def answer(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The reply to one command (see the module docstring)."""
        name = cmd["cmd"]
        if name == "run":
            return {"times": self.run(int(cmd.get("n", 1)))}
        if name == "peak":
            return self.peak(
                cmd["dtype"],
                tuple(cmd["shape"]),
                cmd.get("path"),
                int(cmd.get("warmup", 2)),
                int(cmd.get("n", 10)),
            )
        if name == "accuracy":
            return self.accuracy(cmd["images"], int(cmd.get("batch", 16)))
        if name in ("stats", "quit"):
            return {
                "maxrss_kb": _maxrss_kb(),
                "cpu_s": _cpu_s(),
                "tensorflow_loaded": "tensorflow" in sys.modules,
            }
        return {"error": f"unknown command {name!r}"}

    def run(self, n: int) -> list[float]:
        """Seconds of each of `n` single-image inferences."""
        times = []
        for _ in range(n):
            x = self.samples[self.turn % len(self.samples)][None]
            self.turn += 1
            ts = time.perf_counter()
            self.model.predict(x)
            times.append(time.perf_counter() - ts)
        return times

    def peak(
        self, dtype: str, shape: tuple[int, ...], path: str | None, warmup: int, n: int
    ) -> dict[str, Any]:
        """Seconds of `n` runs of the runtime's peak matrix multiply, after `warmup` untimed."""
        if dtype not in self.model.dtypes:
            return {"error": f"no {dtype} peak for {self.backend}"}
        fn = self.model.peak(dtype, shape, path)
        _timed(fn, warmup)
        return {"times": _timed(fn, n)}

    def accuracy(self, images: str, batch: int) -> dict[str, Any]:
        """P(malignant) of every image of an .npy file, in batches, and the seconds it took."""
        pixels = np.load(images, mmap_mode="r")
        probs = []
        ts = time.perf_counter()
        for s in range(0, len(pixels), batch):
            probs.append(self.model.predict(np.ascontiguousarray(pixels[s : s + batch])))
        seconds = time.perf_counter() - ts
        p = np.concatenate(probs) if probs else np.zeros(0)
        return {"probs": p.tolist(), "seconds": seconds}


def serve(spec: dict[str, Any], inp: Any, out: Any) -> int:
    """Load the variant and say hello, then answer one JSON command a line until "quit" or the end
    of input; a failure is replied as {"error"} (a failed load also ends the worker, code 1)."""

    def reply(obj: dict[str, Any]) -> None:
        """Write `obj` to the parent as one JSON line and flush it."""
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        model, samples, hello = _load(spec)
    except Exception as e:  # reported to the parent, which records it and goes on
        traceback.print_exc(file=sys.stderr)
        reply({"ok": False, "error": _error_text(e)})
        return 1
    reply(hello)
    session = Session(spec, model, samples)
    for line in inp:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            reply(session.answer(cmd))
            if cmd["cmd"] == "quit":
                return 0
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            reply({"error": _error_text(e)})
    return 0


def main(argv: list[str]) -> int:
    """Entry point: `--worker SPEC_JSON`. Replies go to the real stdout; fd 1 becomes stderr."""
    spec = json.loads(argv[argv.index("--worker") + 1])
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # libraries that print to stdout cannot corrupt the protocol
    sys.stdout = sys.stderr
    return serve(spec, sys.stdin, proto)
