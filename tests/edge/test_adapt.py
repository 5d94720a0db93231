"""`dermedge calibrate --adapt`: a site's cases re-fit the last layer, on the shipped models and
real Derm7pt / isic-mvb photos (40 + 40, the tiny model: seconds)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dermedge_testing import DATA, REPO, _need

from dermedge.data.contract import load_rgb, preprocess
from dermedge.edge import adapt as ad
from dermedge.edge.card import embed_card, read_card
from dermedge.edge.runtime import EdgeError, EdgeModel
from dermedge.metrics import choose_threshold

TINY = REPO / "dermedge" / "models" / "tiny.tflite"
DEFAULT = REPO / "dermedge" / "models" / "default.tflite"
NO_FEATURES = REPO / "tests" / "assets" / "tiny_int8.tflite"


def _cli(*args: str, module: str = "dermedge.cli") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def _derm7pt_site(root: Path, n: int = 40, skip: int = 0) -> Path:
    """A clinic's benign/ + malignant/ folder of `n` real Derm7pt photos per class (another
    atlas and dermatoscope than the models' training data), linked in."""
    from dermedge.data.index import read_dataset

    index = read_dataset(_need(DATA / "derm7pt"))
    seen = {"benign": 0, "malignant": 0}
    for r in index.records:
        if seen[r.label] >= skip + n:
            continue
        seen[r.label] += 1
        if seen[r.label] > skip:
            (root / r.label).mkdir(parents=True, exist_ok=True)
            (root / r.label / Path(r.path).name).symlink_to(r.path)
    return root


def _isic_site(root: Path, n: int = 40) -> Path:
    """The training clinics' own kind of photo (isic-mvb test split), `n` per class."""
    src = _need(DATA / "isic-mvb" / "test")
    for label in ("benign", "malignant"):
        (root / label).mkdir(parents=True)
        for p in sorted((src / label).glob("*.jpg"))[:n]:
            (root / label / p.name).symlink_to(p)
    return root


def _site_arrays(model: EdgeModel, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, shipped P(malignant), features) of a class-folder site, computed here."""
    y, p, f = [], [], []
    for label in ("benign", "malignant"):
        for photo in sorted((root / label).iterdir()):
            prob, feats = model.predict_features(preprocess(photo, model.contract), adapted=False)
            y.append(int(label == "malignant"))
            p.append(prob[0])
            f.append(feats[0])
    return np.asarray(y), np.asarray(p), np.asarray(f)


@pytest.fixture(scope="module")
def adapted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """tiny adapted to 40 + 40 Derm7pt photos: (site folder, new model, the CLI's result)."""
    tmp = tmp_path_factory.mktemp("adapt")
    site = _derm7pt_site(tmp / "clinic")
    out = tmp / "tiny-clinic.tflite"
    r = _cli(
        "calibrate",
        str(TINY),
        "--data",
        str(site),
        "--site",
        "clinic-b",
        "--adapt",
        "--out",
        str(out),
    )
    return site, out, r


# --- the fit ------------------------------------------------------------------------------------


def test_sample_space_newton_reaches_the_penalised_optimum() -> None:
    """At the fitted head the gradient of log-loss + L2 penalty is zero (real features)."""
    site = _need(DATA / "isic-mvb" / "test")
    model = EdgeModel(TINY)
    files = (
        sorted((site / "benign").glob("*.jpg"))[:30]
        + sorted((site / "malignant").glob("*.jpg"))[:30]
    )
    x = np.stack([preprocess(f, model.contract) for f in files])
    p, f = model.predict_features(x, adapted=False)
    y = np.r_[np.zeros(30), np.ones(30)]
    for prior, lam in ((False, 30.0), (True, 300.0)):
        head = ad.fit_head(f, p, y, lam, prior)
        d = ad.design(f, p, prior)
        r = ad.sigmoid(d.z @ head.weights + head.offset * d.s + head.bias) - y
        assert np.abs(d.z.T @ r + lam * head.weights).max() < 1e-5
        assert abs(r.sum() + ad.BIAS_LAMBDA * head.bias) < 1e-5
        if prior:
            assert abs(d.s @ r + ad.OFFSET_LAMBDA * head.offset) < 1e-5
        else:
            assert head.offset == 0.0


def test_grouped_folds_keep_lesions_together_and_deal_classes_evenly() -> None:
    y = np.r_[np.zeros(23, int), np.ones(12, int)]
    groups = [f"b{i // 2}" for i in range(23)] + [f"m{i // 3}" for i in range(12)]
    folds = ad.grouped_folds(y, groups, 4, seed=1)
    for g in set(groups):
        assert len({folds[i] for i, h in enumerate(groups) if h == g}) == 1
    for label in (0, 1):
        per_fold = np.bincount(folds[y == label], minlength=4)
        assert per_fold.min() >= 1 and per_fold.max() - per_fold.min() <= 3


def test_head_card_round_trip_and_malformed_heads() -> None:
    rng = np.random.default_rng(0)
    head = ad.Head(rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 2, 8), 0.3, 0.0)
    back = ad.Head.from_card(json.loads(json.dumps(head.to_card())))
    f, p = rng.normal(size=(5, 8)), rng.uniform(size=5)
    assert np.allclose(back.prob(f, p), head.prob(f, p), atol=1e-6)
    bad = head.to_card()
    for broken in (
        {**bad, "kind": "svm"},
        {**bad, "dim": 9},
        {k: v for k, v in bad.items() if k != "bias"},
    ):
        with pytest.raises(ValueError):
            ad.Head.from_card(broken)


# --- the command, end to end --------------------------------------------------------------------


def test_adapt_writes_a_site_head_that_the_runtime_applies(adapted) -> None:
    site, out, r = adapted
    assert r.returncode == 0, r.stderr[-2000:]
    card = read_card(out)
    head, rec = card["head"], card["head"]["record"]
    assert head["site"] == "clinic-b" and rec["site"] == "clinic-b"
    assert rec["counts"] == {"benign": 40, "malignant": 40} and len(rec["data_sha256"]) == 64
    assert rec["date"] and rec["tool"]["dermedge"] and rec["adopted"] is True
    assert rec["auc_gain"]["ci95"][0] > 0 and rec["cv_auc"] > rec["shipped_auc"]
    assert "adapted: the new last layer is in the card" in r.stdout
    # the runtime applies the head on top of the model's own output, which is untouched
    shipped, model = EdgeModel(TINY), EdgeModel(out)
    y, p, f = _site_arrays(shipped, site)
    y2, p2, f2 = _site_arrays(model, site)
    assert np.array_equal(p2, p) and np.array_equal(f2, f)  # the shipped head is recoverable
    want = ad.Head.from_card(head).prob(f, p)
    photos = [q for label in ("benign", "malignant") for q in sorted((site / label).iterdir())]
    got = np.asarray([model.classify(q)["prob"] for q in photos])
    assert np.allclose(got, want, atol=1e-12)
    assert not np.allclose(got, p, atol=0.05)
    # the threshold was chosen on the out-of-fold scores (predictions.csv), with the card's policy
    with open(out.with_name(out.stem + ".calibration") / "predictions.csv") as fh:
        oof = np.asarray([float(row["prob_adapted_out_of_fold"]) for row in csv.DictReader(fh)])
    margin = read_card(TINY)["threshold_policy"]["margin_se"]
    assert card["threshold"] == pytest.approx(choose_threshold(y, oof, 0.95, margin)["threshold"])
    assert card["calibration"]["original_threshold"] == read_card(TINY)["threshold"]
    # the guard learnt the site: >= 95% of its cases pass out of fold (fewer passed before)
    g = rec["guard"]
    assert g["site_pass_rate_out_of_fold"] >= 0.95 > g["site_pass_rate_old_guard"]
    assert card["guard"]["site"] == "clinic-b" and model.guard.cutoff == pytest.approx(g["cutoff"])


def test_edge_classify_and_card_say_the_model_is_adapted(adapted) -> None:
    site, out, r = adapted
    assert r.returncode == 0, r.stderr[-2000:]
    photo = next((site / "malignant").iterdir())
    v = _cli("-v", "--model", str(out), str(photo), module="dermedge.edge")
    assert v.returncode == 0, v.stderr[-2000:]
    assert "adapted to site 'clinic-b'" in v.stderr + v.stdout
    c = _cli("card", str(out))
    assert c.returncode == 0 and "adapted to site 'clinic-b'" in c.stdout


def test_re_adapting_replaces_the_record_and_fits_on_the_shipped_output(
    adapted, tmp_path: Path
) -> None:
    site, out, r = adapted
    assert r.returncode == 0, r.stderr[-2000:]
    again = tmp_path / "again.tflite"
    r2 = _cli(
        "calibrate",
        str(out),
        "--data",
        str(site),
        "--site",
        "clinic-c",
        "--adapt",
        "--out",
        str(again),
    )
    assert r2.returncode == 0, r2.stderr[-2000:]
    first, second = read_card(out), read_card(again)
    rec = second["head"]["record"]
    assert rec["site"] == "clinic-c" and rec["previous"]["site"] == "clinic-b"
    # the same cases give the same head: it is fitted on the model's own output, not on the
    # previous head's
    assert second["head"]["weights"] == first["head"]["weights"]
    assert second["threshold"] == first["threshold"]
    assert second["calibration"]["original_threshold"] == read_card(TINY)["threshold"]


def test_adaptation_that_does_not_beat_the_threshold_keeps_the_shipped_head(
    adapted, tmp_path: Path
) -> None:
    """On the training clinics' own kind of photo the re-fitted layer ranks no better: the
    shipped head is kept (an adapted input model loses its head), the threshold only moves."""
    _, out, r = adapted
    assert r.returncode == 0, r.stderr[-2000:]
    site = _isic_site(tmp_path / "isic")
    dst = tmp_path / "kept.tflite"
    r2 = _cli(
        "calibrate", str(out), "--data", str(site), "--site", "isic", "--adapt", "--out", str(dst)
    )
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "kept the shipped head" in r2.stderr
    card = read_card(dst)
    assert "head" not in card
    rec = card["calibration"]["adaptation"]
    assert rec["adopted"] is False and rec["auc_gain"]["ci95"][0] <= 0
    model = EdgeModel(dst)
    y, p, _ = _site_arrays(model, site)
    assert model.head is None
    margin = read_card(TINY)["threshold_policy"]["margin_se"]
    assert card["threshold"] == pytest.approx(choose_threshold(y, p, 0.95, margin)["threshold"])


def test_holdout_and_curve(tmp_path: Path) -> None:
    site = _derm7pt_site(tmp_path / "clinic", n=60)
    out = tmp_path / "held.tflite"
    r = _cli(
        "calibrate",
        str(TINY),
        "--data",
        str(site),
        "--adapt",
        "--holdout",
        "0.3",
        "--curve",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "held.calibration" / "report.json").read_text())
    held = report["holdout"]
    assert held["counts"] == {"benign": 18, "malignant": 18}
    for key in ("shipped", "threshold_only", "adapted"):
        assert 0 <= held[key]["auc"] <= 1 and held[key]["tp"] + held[key]["fn"] == 18
    assert "held-out: adapted last layer" in r.stdout
    assert [row["per_class"] for row in report["curve"]] == [10, 20, "all"]  # 21 per class per half
    assert (tmp_path / "held.calibration" / "curve.md").read_text().count("\n") >= 4


def test_adapt_refuses_a_model_without_a_feature_output(tmp_path: Path) -> None:
    site = _isic_site(tmp_path / "isic", n=20)
    r = _cli(
        "calibrate",
        str(NO_FEATURES),
        "--data",
        str(site),
        "--adapt",
        "--out",
        str(tmp_path / "x.tflite"),
    )
    assert r.returncode == 2 and "no feature output" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli(
        "calibrate", str(TINY), "--data", str(site), "--curve", "--out", str(tmp_path / "x.tflite")
    )
    assert r.returncode == 2 and "--curve needs --adapt" in r.stderr


def test_runtime_refuses_a_head_over_other_features(tmp_path: Path) -> None:
    card = read_card(TINY)
    head = ad.Head(np.ones(10), np.zeros(10), np.ones(10), 0.0, 0.0)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(embed_card(TINY.read_bytes(), {**card, "head": head.to_card()}))
    with pytest.raises(EdgeError, match="site head of 10 features"):
        EdgeModel(bad)
    site = _isic_site(tmp_path / "isic", n=20)
    r = _cli(
        "calibrate", str(bad), "--data", str(site), "--adapt", "--out", str(tmp_path / "x.tflite")
    )
    assert r.returncode == 2 and "site head of 10 features" in r.stderr
    assert "Traceback" not in r.stderr


def test_threshold_only_calibration_of_an_adapted_model_keeps_its_head(
    adapted, tmp_path: Path
) -> None:
    """Plain `calibrate` on an adapted model moves the threshold of the head's scores."""
    site, out, r = adapted
    assert r.returncode == 0, r.stderr[-2000:]
    dst = tmp_path / "recal.tflite"
    r2 = _cli("calibrate", str(out), "--data", str(site), "--out", str(dst))
    assert r2.returncode == 0, r2.stderr[-2000:]
    card, before = read_card(dst), read_card(out)
    assert card["head"] == before["head"]
    model = EdgeModel(dst)
    photos = [q for label in ("benign", "malignant") for q in sorted((site / label).iterdir())]
    y = np.asarray([int(q.parent.name == "malignant") for q in photos])
    p = np.asarray([model.classify(q)["prob"] for q in photos])
    margin = read_card(TINY)["threshold_policy"]["margin_se"]
    assert card["threshold"] == pytest.approx(choose_threshold(y, p, 0.95, margin)["threshold"])


def test_the_default_models_site_guard_still_flags_pictures_that_are_no_lesion(
    tmp_path: Path,
) -> None:
    """The guard refitted on 40 + 40 Derm7pt cases passes the site's own held-out cases more
    often than the shipped guard and still flags real photographs of other things."""
    import skimage.data
    from PIL import Image

    model = EdgeModel(DEFAULT)
    fit_site = _derm7pt_site(tmp_path / "fit")
    check_site = _derm7pt_site(tmp_path / "check", skip=40)
    y, _, f = _site_arrays(model, fit_site)
    folds = ad.grouped_folds(y, [str(i) for i in range(y.size)], 5, 0)
    guard, fig = ad.refit_guard(model.guard, f, y, folds)
    _, _, fc = _site_arrays(model, check_site)
    assert (guard.score(fc) <= guard.cutoff).mean() > (
        model.guard.score(fc) <= model.guard.cutoff
    ).mean()
    others = [
        preprocess(
            np.asarray(Image.fromarray(getattr(skimage.data, n)()).convert("RGB")), model.contract
        )
        for n in ("astronaut", "coffee", "chelsea", "rocket")
    ]
    _, fo = model.predict_features(np.stack(others), adapted=False)
    assert (guard.score(fo) > guard.cutoff).all()


def test_adapt_is_edge_only() -> None:
    code = (
        "import sys, dermedge.edge.adapt, dermedge.edge.adapt_site; "
        "bad = [m for m in ('tensorflow', 'sklearn', 'matplotlib', 'keras', 'dermedge.train') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_guard_refit_moves_a_far_cutoff_with_the_cutoff(tmp_path: Path) -> None:
    """A guard with a second, higher cut-off keeps its ratio to the re-chosen cut-off."""
    import dataclasses

    from dermedge.edge.guard import Guard

    @dataclasses.dataclass
    class FarGuard(Guard):
        far_cutoff: float = 0.0

    model = EdgeModel(TINY)
    old = FarGuard(**dataclasses.asdict(model.guard), far_cutoff=3 * model.guard.cutoff)
    y, _, f = _site_arrays(model, _derm7pt_site(tmp_path / "fit", n=20))
    new, fig = ad.refit_guard(old, f, y, ad.grouped_folds(y, [str(i) for i in range(y.size)], 5, 0))
    assert new.cutoff != pytest.approx(old.cutoff)
    assert new.far_cutoff == pytest.approx(3 * new.cutoff) and fig["far_cutoff"] == new.far_cutoff


def test_camera_and_video_sessions_apply_the_site_head(adapted, tmp_path: Path) -> None:
    """A still video of a site photo through the camera loop: its decision's P(malignant) is the
    head's on that frame (as `classify` gives it), not the model's own output."""
    cv2 = pytest.importorskip("cv2")
    from dermedge.edge.camera import Session, SessionOptions
    from dermedge.edge.sources import OpenCVSource

    site, out, r = adapted
    assert r.returncode == 0, r.stderr[-2000:]
    rgb = np.asarray(load_rgb(next((site / "malignant").iterdir())))
    bgr = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (640, 480), interpolation=cv2.INTER_AREA)
    video = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for _ in range(8):
        writer.write(bgr)
    writer.release()
    cap = cv2.VideoCapture(str(video))
    ok, decoded = cap.read()
    cap.release()
    assert ok
    frame = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    probs = {}
    for name, path in (("adapted", out), ("shipped", TINY)):
        model = EdgeModel(path)
        events: list[dict] = []
        Session(model, OpenCVSource(str(video)), SessionOptions(), events.append).run()
        decisions = [e for e in events if e["event"] == "decision"]
        assert decisions, events[-3:]
        probs[name] = decisions[0]["prob"]
        assert probs[name] == pytest.approx(model.classify(frame)["prob"], abs=1e-4)
    assert abs(probs["adapted"] - probs["shipped"]) > 1e-3
