"""The parent side of the worker processes (the child is `worker.py`): start
`python -m dermedge.benchmark --worker SPEC` with this interpreter and environment, and talk to it
in JSON lines; the ONNX exporter process is started the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def python() -> list[str]:
    """The command line that runs `python -m dermedge.benchmark` with this interpreter."""
    return [sys.executable, "-m", "dermedge.benchmark"]


def worker_env() -> dict[str, str]:
    """A worker's environment: TensorFlow quieter, output unbuffered, this package importable."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # the package must be importable from the worker exactly as here (a source checkout too)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Worker:
    """A `python -m dermedge.benchmark --worker` process; JSON lines both ways."""

    def __init__(self, spec: dict[str, Any], log_path: Path, timeout: float) -> None:
        """Start the worker process, its stderr appended to `log_path`, and read its hello."""
        self.spec = spec
        self.timeout = timeout
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [*python(), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=worker_env(),
            text=True,
            bufsize=1,
        )
        self.hello = self._read()
        self.error: str | None = None if self.hello.get("ok") else self.hello.get("error", "failed")

    def _read(self) -> dict[str, Any]:
        """The next reply; an {"ok": False} error if the worker times out (killed) or exits."""
        import selectors

        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(self.timeout):
            self.proc.kill()
            return {"ok": False, "error": f"no reply in {self.timeout:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            return {
                "ok": False,
                "error": f"worker exited with code {self.proc.returncode} (see {self.log.name})",
            }
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send a command and return the reply; a failed worker answers its error at once."""
        if self.error:
            return {"error": self.error}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self.error = f"worker gone: {e}"
            return {"error": self.error}
        reply = self._read()
        if "error" in reply and reply.get("ok") is False:
            self.error = reply["error"]
        return reply

    def quit(self) -> None:
        """Ask the worker to exit, without waiting for it (a TensorFlow exit takes seconds)."""
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            return
        try:
            if not self.error and self.proc.poll() is None:
                stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def close(self) -> None:
        """Ask the worker to quit, wait a minute (then kill it), and close its pipe and log."""
        self.quit()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
