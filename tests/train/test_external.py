"""External evaluation on real files: the shipped tiny.tflite on a derm7pt subset, the overlap
refusal against a training manifest (byte-identical and resized copies), the card record and
where it shows (`dermedge card`, `edge-classify -v`, `dermedge convert --inspect`)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dermedge.cli import main
from dermedge.edge.card import embed_card, read_card

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "dermedge" / "models" / "tiny.tflite"
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))


def _need(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data {path} not found (set DERMEDGE_DATA to the shared data folder)")
    return path


def _without_external(dst: Path) -> Path:
    """A copy of the shipped tiny model whose card has no external record (the shipped one has)."""
    card = {k: v for k, v in read_card(TINY).items() if k != "external"}
    dst.write_bytes(embed_card(TINY.read_bytes(), card))
    return dst


def _place(src: Path, dst: Path) -> None:
    """Hard-link a shared image (copy across file systems)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def _derm7pt_subset(root: Path, n_mal: int = 20, n_ben: int = 40) -> Path:
    """A Derm7pt folder (the real reader's layout) holding a spread of 60 cases."""
    src = _need("derm7pt")
    with open(src / "meta" / "meta.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    mal = [
        r
        for r in rows
        if r["diagnosis"].startswith("melanoma") or r["diagnosis"] == "basal cell carcinoma"
    ]
    ben = [r for r in rows if r not in mal and r["diagnosis"] != "miscellaneous"]
    pick = mal[:: max(1, len(mal) // n_mal)][:n_mal] + ben[:: max(1, len(ben) // n_ben)][:n_ben]
    pick = [r for r in pick if (src / "images" / r["derm"]).is_file()]
    dst = root / "derm7pt"
    (dst / "meta").mkdir(parents=True)
    with open(dst / "meta" / "meta.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(pick)
    for r in pick:
        _place(src / "images" / r["derm"], dst / "images" / r["derm"])
    return dst


def _isic_manifest(root: Path, n: int = 12) -> tuple[Path, list[Path]]:
    """A tiny training manifest of isic-mvb images (train and val rows); and those images."""
    isic = _need("isic-mvb")
    imgs = [
        p
        for cls in ("benign", "malignant")
        for p in sorted((isic / "train" / cls).glob("*.jpg"))[: n // 2]
    ]
    lines = ["path,label,split,source"]
    lines += [
        f"{p.relative_to(isic).as_posix()},{p.parent.name},{'val' if i % 4 == 3 else 'train'},isic-mvb"
        for i, p in enumerate(imgs)
    ]
    out = root / "trainset"
    out.mkdir(parents=True)
    (out / "manifest.csv").write_text("\n".join(lines) + "\n")
    (out / "manifest.json").write_text(json.dumps({"root": str(isic)}))
    return out / "manifest.csv", imgs


def _run(args: list[str], env_root: Path):
    env = {"XDG_CACHE_HOME": str(env_root / "cache"), "DERMEDGE_RUNS": str(env_root / "runs")}
    return CliRunner(env=env).invoke(main, args)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """tiny.tflite evaluated on a 60-image derm7pt subset, overlap checked against isic-mvb."""
    pytest.importorskip("matplotlib")
    root = tmp_path_factory.mktemp("external")
    ds = _derm7pt_subset(root)
    manifest, _ = _isic_manifest(root)
    out = root / "eval"
    r = _run(
        [
            "evaluate",
            str(TINY),
            "--data",
            str(ds),
            "--external",
            "--train-manifest",
            str(manifest),
            "--out",
            str(out),
            "--bootstrap",
            "200",
        ],
        root,
    )
    assert r.exit_code == 0, r.output
    return root, ds, out, r


def test_external_evaluation_writes_every_output_with_sane_values(evaluated):
    root, ds, out, r = evaluated
    for name in (
        "metrics.json",
        "report.md",
        "predictions.csv",
        "roc.png",
        "reliability.png",
        "per_dx.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 200, name
    m = json.loads((out / "metrics.json").read_text())
    card = read_card(TINY)
    assert m["dataset"] == "derm7pt" and m["n"] == 60 and m["positives"] == 20
    assert (
        0.5 < m["roc_auc"] <= 1.0 and m["roc_auc_ci95"][0] <= m["roc_auc"] <= m["roc_auc_ci95"][1]
    )
    pts = m["thresholds"]
    assert (
        pts["card"]["threshold"] == pytest.approx(card["threshold"])
        and pts["card"]["from"] == "card"
    )
    for key in ("card", "youden", "sensitivity_0.95"):
        p = pts[key]
        assert p["tp"] + p["fn"] == 20 and p["tn"] + p["fp"] == 40
        lo, hi = p["ci95"]["sensitivity"]
        assert lo <= p["sensitivity"] <= hi
    assert pts["sensitivity_0.95"]["sensitivity"] >= 0.95 and "test set" in pts["youden"]["note"]
    assert sum(d["n"] for d in m["per_dx"]) == 60
    assert all(0 <= d["referred_fraction"] <= 1 for d in m["per_dx"])
    assert {d["group"] for d in m["per_dx"]} >= {"clark nevus", "basal cell carcinoma"}
    assert 0 <= m["ece"] <= 1
    assert m["overlap"]["checked"] and m["overlap"]["overlapping"] == 0
    assert m["overlap"]["train_images"] == 12
    assert "none of 60 external images" in r.output
    assert "card threshold t=" in r.output and "clark nevus" in r.output
    report = (out / "report.md").read_text()
    assert "derm7pt" in report and "![roc](roc.png)" in report and "not a diagnosis" in report
    assert len((out / "predictions.csv").read_text().splitlines()) == 61


def test_bare_tflite_without_manifest_warns_loudly_and_default_out(evaluated):
    root, ds, _, _ = evaluated
    r = _run(["evaluate", str(TINY), "--data", str(ds), "--external", "--bootstrap", "100"], root)
    assert r.exit_code == 0, r.output
    assert "overlap with the training data NOT CHECKED" in r.stderr
    m = json.loads((root / "runs" / "eval" / "tiny-derm7pt" / "metrics.json").read_text())
    assert m["overlap"]["checked"] is False


def test_overlap_is_refused_unless_allowed(tmp_path):
    pytest.importorskip("matplotlib")
    manifest, imgs = _isic_manifest(tmp_path)
    ds = tmp_path / "mixed"
    src = _need("derm7pt") / "images"
    for cls, sub in (("benign", "NEL"), ("malignant", "NML")):
        for p in sorted((src / sub).glob("*.jpg"))[:6]:
            _place(p, ds / cls / p.name)
    _place(imgs[0], ds / "benign" / "copy_a.jpg")  # byte-identical
    _place(imgs[-1], ds / "malignant" / "copy_b.jpg")
    small = Image.open(imgs[1]).convert("RGB").resize((160, 160), Image.Resampling.LANCZOS)
    small.save(ds / "benign" / "resized.jpg", quality=85)  # same photo, other bytes
    args = [
        "evaluate",
        str(TINY),
        "--data",
        str(ds),
        "--external",
        "--train-manifest",
        str(manifest),
        "--bootstrap",
        "100",
        "--out",
        str(tmp_path / "out"),
    ]
    r = _run(args, tmp_path)
    assert r.exit_code == 2, r.output
    assert "refusing: 3 of 15 external images" in r.output
    assert "2 byte-identical, 1 near-duplicate" in r.output and "--allow-overlap" in r.output
    assert not (tmp_path / "out").exists()
    r = _run([*args, "--allow-overlap"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "NOT an external evaluation" in r.stderr
    ov = json.loads((tmp_path / "out" / "metrics.json").read_text())["overlap"]
    assert (ov["overlapping"], ov["exact"], ov["near"]) == (3, 2, 1)
    r = _run(["evaluate", str(TINY), "--data", str(ds), "--allow-overlap"], tmp_path)
    assert r.exit_code == 2 and "only with --external" in r.output


def _pixels(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)


def test_card_add_external_round_trips_into_the_tflite(evaluated, tmp_path):
    from dermedge.edge.runtime import EdgeModel

    root, _, out, _ = evaluated
    model = tmp_path / "tiny.tflite"
    shutil.copy(TINY, model)
    before = EdgeModel(model).predict(_pixels())
    r = _run(["card", str(model), "--add-external", str(out / "metrics.json")], root)
    assert r.exit_code == 0, r.output
    card = read_card(model)
    e = card["external"]["derm7pt"]
    m = json.loads((out / "metrics.json").read_text())
    assert e["n"] == 60 and e["auc"] == pytest.approx(m["roc_auc"]) and e["overlap_checked"]
    assert e["at_card_threshold"]["sensitivity"] == m["thresholds"]["card"]["sensitivity"]
    assert len(e["metrics_sha256"]) == 64 and e["tool_version"] and e["date"]
    old = read_card(TINY)
    skip = ("external", "file_sha256")
    assert {k: v for k, v in card.items() if k not in skip} == {
        k: v for k, v in old.items() if k not in skip
    }
    np.testing.assert_array_equal(EdgeModel(model).predict(_pixels()), before)
    assert "derm7pt: n=60" in r.output
    r = _run(
        [
            "card",
            str(model),
            "--add-external",
            str(out / "metrics.json"),
            "--out",
            str(tmp_path / "new.tflite"),
        ],
        root,
    )
    assert r.exit_code == 0 and "replaced the external entry for derm7pt" in r.output
    assert read_card(tmp_path / "new.tflite")["external"]["derm7pt"] == e
    r = _run(["card", str(_without_external(tmp_path / "bare.tflite"))], root)
    assert r.exit_code == 0 and "no external evaluation recorded: internal figures only" in r.output


def test_card_add_external_to_a_run_folder_and_threshold_mismatch(evaluated, tmp_path):
    root, _, out, _ = evaluated
    run = tmp_path / "run"
    run.mkdir()
    card = read_card(TINY)
    (run / "model_card.json").write_text(json.dumps(card))
    r = _run(["card", str(run), "--add-external", str(out / "metrics.json")], root)
    assert r.exit_code == 0, r.output
    assert json.loads((run / "model_card.json").read_text())["external"]["derm7pt"]["n"] == 60
    (run / "model_card.json").write_text(json.dumps({**card, "threshold": 0.3}))
    r = _run(["card", str(run), "--add-external", str(out / "metrics.json")], root)
    assert r.exit_code == 2 and "refusing" in r.output and "--force" in r.output
    r = _run(["card", str(run), "--add-external", str(out / "report.md")], root)
    assert r.exit_code == 2 and "not JSON" in r.output


def test_edge_classify_verbose_and_inspect_show_external(evaluated, tmp_path):
    from dermedge.edge.cli import main as edge_main

    root, ds, out, _ = evaluated
    model = _without_external(tmp_path / "tiny.tflite")
    photo = next((ds / "images").rglob("*.jpg"))
    r = CliRunner().invoke(edge_main, ["-v", "-m", str(model), str(photo)])
    assert r.exit_code == 0 and "no external evaluation recorded: internal figures only" in r.stderr
    assert (
        _run(["card", str(model), "--add-external", str(out / "metrics.json")], root).exit_code == 0
    )
    r = CliRunner().invoke(edge_main, ["-v", "-m", str(model), str(photo)])
    assert r.exit_code == 0, r.output
    assert (
        "external: derm7pt: n=60 (20 malignant), AUC" in r.stderr
        and "at card threshold" in r.stderr
    )
    r = _run(["convert", "--inspect", str(model)], root)
    assert r.exit_code == 0, r.output
    assert "external  derm7pt: n=60" in r.output and "sens " in r.output
