"""In-browser inference time and Python parity for any model, in headless Chromium.

    python tests/e2e/bench_phone.py MODEL.tflite [IMAGE.jpg]

Serves MODEL on loopback, plays a 640x480 video made from IMAGE (default: the first isic-mvb test
malignant photo) as the fake camera, and prints the page's probability next to the Python edge
result on the same captured frame, and the in-browser inference ms per frame (median over the
frames classified). Not collected by pytest; the numbers go in closing notes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_phone import DATA, REPO, Reference, write_y4m  # noqa: E402

from dermedge.edge.serve import make_server  # noqa: E402


def main() -> None:
    model = Path(sys.argv[1])
    image = (
        Path(sys.argv[2])
        if len(sys.argv) > 2
        else sorted((DATA / "isic-mvb/test/malignant").glob("*.jpg"))[0]
    )
    out = Path(tempfile.mkdtemp(prefix="dermedge-bench-"))
    rgb = np.asarray(Image.open(image).convert("RGB").resize((640, 480), Image.Resampling.BICUBIC))
    write_y4m(rgb, out / "lesion.y4m")
    ref = Reference(model)
    srv = make_server(str(model), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    t0 = time.time()
    try:
        r = subprocess.run(
            [
                "node",
                str(REPO / "tests/e2e/phone.mjs"),
                srv.url,
                str(out / "lesion.y4m"),
                str(out),
                "--frames=40",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        srv.shutdown()
        srv.server_close()
    results = [json.loads(x[7:]) for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not results:
        sys.exit(f"browser run failed:\n{r.stderr[-3000:]}")
    page = results[0]
    frame = np.asarray(Image.open(page["downloads"]["png"]).convert("RGB"))
    cap = json.loads(Path(page["downloads"]["json"]).read_text())
    p_py = ref.prob(frame)
    t_py = []
    x = __import__("dermedge.data.contract", fromlist=["preprocess"]).preprocess(
        frame, ref.contract
    )
    for _ in range(20):
        s = time.perf_counter()
        ref._predict(x)
        t_py.append((time.perf_counter() - s) * 1000)
    print(
        json.dumps(
            {
                "model": str(model),
                "model_bytes": model.stat().st_size,
                "image": str(image),
                "page_prob": cap["prob"],
                "python_prob": p_py,
                "abs_diff": abs(cap["prob"] - p_py),
                "page_decision": page["decision"],
                "python_decision": ref.decision(p_py),
                "runtime": page["runtime"],
                "browser_infer_ms_median": round(page["infer_ms_median"], 2),
                "browser_infer_ms_mean": round(page["infer_ms_mean"], 2),
                "browser_infer_ms_min": round(page["infer_ms_min"], 2),
                "frames_timed": page["infer_ms_n"],
                "browser_preprocess_and_gate_ms": round(page["preprocess_ms"], 1),
                "python_reference": ref.name,
                "python_infer_ms_median": round(sorted(t_py)[10], 2),
                "wall_s": round(time.time() - t0, 1),
                "artifacts": str(out),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
