"""tests/pi/compare.py: the x86_64-vs-ARM comparison that scripts/pi-check relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

COMPARE = Path(__file__).parent / "pi" / "compare.py"


def _run(
    tmp_path: Path, ref: list[dict], arm: list[dict], tol: float, *extra: str
) -> subprocess.CompletedProcess:
    for name, doc in (("ref", ref), ("arm", arm)):
        (tmp_path / f"{name}.json").write_text("\n".join(json.dumps(d) for d in doc))
    return subprocess.run(
        [
            sys.executable,
            str(COMPARE),
            str(tmp_path / "ref.json"),
            str(tmp_path / "arm.json"),
            "--tol",
            str(tol),
            *extra,
        ],
        capture_output=True,
        text=True,
    )


def _camera(probs: list[float], t: float = 0.19140625) -> list[dict]:
    recs = [
        {
            "event": "decision",
            "prob": p,
            "threshold": t,
            "decision": "refer" if p >= t else "routine",
            "label": "malignant" if p >= t else "benign",
        }
        for p in probs
    ]
    refer = sum(r["decision"] == "refer" for r in recs)
    return [
        *recs,
        {"event": "summary", "decisions": {"routine": len(recs) - refer, "refer": refer}},
    ]


def test_identical_outputs_pass(tmp_path):
    r = _run(tmp_path, _camera([0.03, 0.99]), _camera([0.03, 0.99]), 0.0)
    assert r.returncode == 0 and "bit-identical" in r.stdout


def test_a_borderline_decision_may_flip_within_tolerance(tmp_path):
    # one frame a few int8 steps below the threshold on x86_64, just above it on ARM (measured on armv7: 0.1719 vs 0.1914)
    r = _run(tmp_path, _camera([0.1719, 0.03, 0.99]), _camera([0.1915, 0.03, 0.99]), 0.03)
    assert r.returncode == 0, r.stdout
    assert "borderline: record [0]" in r.stdout


def test_flips_far_from_the_threshold_or_beyond_tolerance_fail(tmp_path):
    # same probability shift, but the tolerance is tighter than it
    r = _run(tmp_path, _camera([0.1719, 0.99]), _camera([0.1915, 0.99]), 0.005)
    assert (
        r.returncode == 1
        and "MISMATCH [0].decision" in r.stdout
        and "MISMATCH [0].label" in r.stdout
    )
    # a decision that differs although neither probability is near the threshold
    ref, arm = _camera([0.05, 0.99]), _camera([0.05, 0.99])
    arm[0]["decision"] = "refer"
    r = _run(tmp_path, ref, arm, 0.03)
    assert r.returncode == 1 and "MISMATCH [0].decision" in r.stdout
    # the summary may not differ by more than the borderline flips
    ref, arm = _camera([0.1719, 0.99]), _camera([0.1915, 0.99])
    arm[-1]["decisions"] = {"routine": 0, "refer": 4}
    r = _run(tmp_path, ref, arm, 0.03)
    assert r.returncode == 1 and "decisions.refer" in r.stdout


def test_guard_scores_may_differ_by_a_share_of_their_value_but_not_their_flag(tmp_path: Path):
    ref = [{"prob": 0.3, "threshold": 0.13, "guard_score": 1.4505, "unfamiliar": False}]
    arm = [{"prob": 0.3, "threshold": 0.13, "guard_score": 1.5047, "unfamiliar": False}]
    assert _run(tmp_path, ref, arm, 0.03).returncode == 1  # 0.054 > 0.03 absolute
    assert _run(tmp_path, ref, arm, 0.03, "--guard-rel", "0.05").returncode == 0  # 3.6% of 1.5
    far = [{**arm[0], "guard_score": 1.60}]
    assert _run(tmp_path, ref, far, 0.03, "--guard-rel", "0.05").returncode == 1  # 9%
    flipped = [{**arm[0], "unfamiliar": True}]
    r = _run(tmp_path, ref, flipped, 0.03, "--guard-rel", "0.05")
    assert r.returncode == 1 and "unfamiliar" in r.stdout
