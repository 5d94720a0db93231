"""benchmarks/ship_rule.py: the halves for site adaptation, what a model saw, the verdict and the
choice; end to end on a small manifest of real photos with the shipped tiny model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dermedge.data.index import Record

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ship_rule.py"


@pytest.fixture(scope="module")
def rule() -> Any:
    """The benchmark script, imported from its file."""
    spec = importlib.util.spec_from_file_location("ship_rule", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_halves_keep_cases_whole_and_halve_each_class(rule):
    y = np.array([0] * 60 + [1] * 40)
    groups = [f"case:{i // 2}" for i in range(100)]  # two images per case
    for seed in (0, 1):
        fit = rule.halves(y, groups, seed)
        for g in set(groups):
            idx = [i for i, x in enumerate(groups) if x == g]
            assert len({bool(fit[i]) for i in idx}) == 1  # a case on one side only
        assert fit[y == 1].sum() == 20 and fit[y == 0].sum() == 30
    assert not np.array_equal(rule.halves(y, groups, 0), rule.halves(y, groups, 1))


def test_seen_by_lesion_photo_digest_or_isic_id(rule):
    keys = {"group:ham10000:HAM_1", "sha:abc", "id:ISIC_0024306"}
    assert rule.is_seen(Record("/x/a.jpg", "benign", "s", "ham10000:HAM_1"), "zzz", keys)
    assert rule.is_seen(Record("/x/b.jpg", "benign", "s", "g2"), "abc", keys)
    assert rule.is_seen(Record("/y/ISIC_0024306.jpg", "benign", "s", "g3"), "zzz", keys)
    assert not rule.is_seen(Record("/y/ISIC_0024307.jpg", "benign", "s", "g3"), "zzz", keys)
    assert not rule.is_seen(Record("/x/a.jpg", "benign", "s", "ham10000:HAM_1"), "zzz", None)


def _result(name: str, aucs: dict[str, float | None], d7: float, adapted: float | None) -> dict:
    d7row = {"auc": d7, "sensitivity": 0.95, "specificity": 0.2}
    return {
        "model": name,
        "sources": {k: {"auc": v} for k, v in aucs.items()},
        "derm7pt": d7row,
        "derm7pt_adapted": {"auc": adapted},
    }


def test_verdict_floors_and_choice(rule):
    good = {"ham10000": 0.93, "isic2017": 0.85, "isic2020": 0.81, "isic-mvb": 0.5}
    weak = {**good, "isic2020": 0.79}
    a = _result("a", good, 0.80, 0.84)
    b = _result("b", weak, 0.90, 0.90)  # better on Derm7pt, but below a floor
    c = _result("c", good, 0.82, None)  # no feature output: ranked on Derm7pt as shipped
    for r in (a, b, c):
        r["verdict"] = rule.verdict(r)
    assert a["verdict"]["holds_up"] and a["verdict"]["score"] == pytest.approx(0.82)
    assert not b["verdict"]["holds_up"] and b["verdict"]["failed"] == ["isic2020 0.790 < 0.8"]
    assert c["verdict"]["score"] == pytest.approx(0.82)
    assert rule.choose([a, b]) == "a"  # isic-mvb at 0.5 is no criterion
    assert rule.choose([b]) is None
    missing = _result("d", {"ham10000": 0.95}, 0.9, 0.9)
    assert rule.verdict(missing)["failed"] == ["isic2017 n/a < 0.82", "isic2020 n/a < 0.8"]
    few = _result("e", good, 0.9, 0.9)  # a HAM10000 AUC on 6 melanomas it never saw
    few["sources"]["ham10000"]["positives"] = 6
    assert rule.verdict(few)["failed"] == [
        "ham10000 not measurable (6 malignant test images unseen)"
    ]


def test_when_none_holds_up_only_a_candidate_better_on_every_figure_replaces_the_default(rule):
    weak = {"ham10000": 0.93, "isic2017": 0.66, "isic2020": 0.67}
    inc = _result("default", weak, 0.77, 0.86)
    better = _result("b", {**weak, "isic2017": 0.75, "isic2020": 0.79}, 0.82, 0.85)
    worse_src = _result("c", {**weak, "isic2017": 0.60, "isic2020": 0.79}, 0.84, 0.88)
    low_spec = _result("d", {**weak, "isic2017": 0.75, "isic2020": 0.79}, 0.85, 0.88)
    low_spec["derm7pt"]["specificity"] = 0.1
    for r in (inc, better, worse_src, low_spec):
        for row in r["sources"].values():
            row["positives"] = 60
        r["verdict"] = rule.verdict(r)
    assert not any(r["verdict"]["holds_up"] for r in (inc, better, worse_src, low_spec))
    assert rule.improves_on(better, inc) == []
    assert rule.improves_on(worse_src, inc) == ["isic2017 0.600 < 0.660"]
    assert rule.improves_on(low_spec, inc) == ["Derm7pt specificity 0.100 < 0.200"]
    assert rule.choose([inc, better, worse_src, low_spec]) == "b"
    assert rule.choose([inc, worse_src]) is None
    assert rule.choose([better, worse_src]) is None  # no shipped model to improve on


def test_fallback_head_ranks_separable_features(rule):
    rng = np.random.default_rng(0)
    y = np.array([0] * 80 + [1] * 80)
    x = rng.normal(size=(160, 20)) + y[:, None] * 1.5
    w, b, mean, scale = rule._logreg(x, y)
    p = rule._sigmoid(((x - mean) / scale) @ w + b)
    from dermedge.metrics import roc_auc

    assert roc_auc(y, p) > 0.95


@pytest.mark.slow
def test_ship_rule_end_to_end_on_real_photos(rule, isic_dir, data_dir, tmp_path, monkeypatch):
    """A two-source manifest of real photos and a 40-photo Derm7pt stand-in, the shipped tiny
    model: JSON, MD and PNG written, every figure present, features cached and reused."""
    from dermedge_testing import write_isic_manifest

    derm = data_dir / "derm7pt"
    if not derm.is_dir():
        pytest.skip("derm7pt/ is not in the shared data")
    manifest = write_isic_manifest(
        tmp_path / "m", isic_dir, [("train", 4, "train", 0), ("test", 12, "test", 0)], "isic2020"
    )
    monkeypatch.setattr(rule, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(rule, "N_BOOT", 100)
    monkeypatch.setattr(rule, "ADAPT_SEEDS", (0, 1))
    small = _small_derm7pt(derm, tmp_path / "d7", 20)
    model = str(REPO / "dermedge/models/tiny.tflite")
    res = rule.judge("tiny", model, str(manifest), small, str(manifest / "manifest.csv"))
    assert res["derm7pt"]["n"] == 40 and 0 <= res["derm7pt"]["auc"] <= 1
    assert res["derm7pt_adapted"]["adapter"] in ("dermedge.edge.adapt", "numpy logreg (fallback)")
    assert len(res["derm7pt_adapted"]["seeds"]) == 2
    assert (
        res["sources"]["isic2020"]["n"] == 24 and res["sources"]["isic2020"]["left_out_seen"] == 0
    )
    assert list((tmp_path / "cache").glob("*.npz"))
    out = tmp_path / "out" / "rule"
    monkeypatch.setattr(
        sys,
        "argv",
        ["ship_rule", "--model", f"tiny={model}", "--manifest", str(manifest)]
        + ["--derm7pt", str(small), "--out", str(out)],
    )
    rule.main()
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["candidates"][0]["model"] == "tiny"
    assert "Derm7pt AUC" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def _small_derm7pt(derm: Path, root: Path, per_class: int) -> Path:
    """A Derm7pt release of `per_class` images of each label (symlinked), same layout."""
    import csv

    with open(derm / "meta" / "meta.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    mel = [r for r in rows if r["diagnosis"].lower().startswith("melanoma")][:per_class]
    nev = [r for r in rows if r["diagnosis"].lower() == "clark nevus"][:per_class]
    (root / "meta").mkdir(parents=True)
    for r in mel + nev:
        dst = root / "images" / r["derm"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        src = derm / "images" / r["derm"]
        if src.is_file():
            dst.symlink_to(src)
    with open(root / "meta" / "meta.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([r for r in mel + nev if (root / "images" / r["derm"]).exists()])
    return root
