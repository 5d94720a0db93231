"""The unfamiliar-input guard on pictures that are not dermoscopic lesion photos, and on ones that are.

For a guarded model (`dermedge convert --add-guard`): the true-negative rate (share flagged) on
scikit-image's sample photographs (astronaut, coffee, chelsea, rocket, camera, page, ...; whole and
centre crop), on blank and flat frames (uniform colours incl. skin tones, noise, gradients) and on
crops of healthy skin cut from the corners of the shared dermoscopy photos; and the pass rate on
the model's own test split and on Derm7pt (another dermatoscope: it should mostly pass). Writes
JSON, MD and a PNG of the score distributions.

    python benchmarks/guard_ood.py --model dermedge/models/default.tflite --name default \
        --plain runs/convert/default-plain/default.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from dermedge.data.contract import ImageError, preprocess
from dermedge.data.index import read_dataset
from dermedge.data.io import atomic_write_text
from dermedge.edge.runtime import EdgeModel
from dermedge.plotting import new_figure, save_png

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data"))
SKIMAGE = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "checkerboard",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
SKIN_TONES = ((255, 224, 196), (234, 192, 134), (198, 134, 66), (141, 85, 36), (92, 56, 32))


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = np.clip(a / (a.max() or 1) * 255, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def skimage_photos() -> list[tuple[str, np.ndarray]]:
    """Each sample image whole and as its centre half: real photos that no one here made."""
    import skimage.data

    out = []
    for name in SKIMAGE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = _rgb(getattr(skimage.data, name)())
            except Exception:  # noqa: BLE001 - a sample that needs a download is left out
                continue
        h, w = img.shape[:2]
        out += [(name, img), (f"{name} (centre)", img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4])]
    return out


def flat_frames(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Blank and flat frames a camera sees: uniform colours, skin tones, noise, gradients."""
    rng = np.random.default_rng(seed)
    colours = [
        (0, 0, 0),
        (255, 255, 255),
        (128, 128, 128),
        (64, 64, 64),
        (200, 200, 200),
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        *SKIN_TONES,
    ]
    out = [(f"uniform {c}", np.full((480, 640, 3), c, np.uint8)) for c in colours]
    for i in range(4):
        out.append((f"noise {i}", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)))
        tone = np.asarray(SKIN_TONES[i], np.float64)
        ramp = np.linspace(0.6, 1.1, 640)[None, :, None]
        out.append(
            (
                f"skin gradient {i}",
                np.clip(tone * ramp * np.ones((480, 1, 1)), 0, 255).astype(np.uint8),
            )
        )
    return out


def skin_crops(n_photos: int = 60) -> list[tuple[str, np.ndarray]]:
    """The four corners (a quarter of each side) of dermoscopy photos: skin beside the lesion."""
    files = sorted((DATA / "isic-mvb" / "test" / "benign").glob("*.jpg"))[:n_photos]
    out = []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"))
        h, w = a.shape[:2]
        ch, cw = h // 4, w // 4
        for tag, crop in (
            ("tl", a[:ch, :cw]),
            ("tr", a[:ch, -cw:]),
            ("bl", a[-ch:, :cw]),
            ("br", a[-ch:, -cw:]),
        ):
            if crop.mean() > 40:  # a black vignette corner is a flat frame, counted there
                out.append((f"{f.name} {tag}", crop))
    return out


def dataset(root: Path, limit: int | None = None) -> list[tuple[str, Path]]:
    recs = read_dataset(root).records
    if limit:
        recs = recs[:: max(1, len(recs) // limit)][:limit]
    return [(r.path, Path(r.path)) for r in recs]


def scores(model: EdgeModel, items: list[tuple[str, object]]) -> tuple[np.ndarray, float]:
    """Guard score of each picture through the model's own contract (unreadable ones skipped),
    and the share that gets no decision (blank, or flagged without skin colours)."""
    out, none = [], 0
    for _, src in items:
        try:
            x = preprocess(src, model.contract)
        except ImageError:
            continue
        _, f = model.predict_features(x)
        out.append(float(model.guard.score(f)[0]))
        none += model.classify(x)["decision"] == "none"
    return np.asarray(out), none / max(1, len(out))


def outcomes(model: EdgeModel, root: Path) -> dict[str, dict[str, int]]:
    """Per class of a labelled set, how many photos got each decision now, and before the guard
    learned to tell lesions from other pictures (then every flagged photo got no decision)."""
    out: dict[str, dict[str, int]] = {}
    for r in read_dataset(root).records:
        try:
            res = model.classify(r.path)
        except ImageError:
            continue
        c = out.setdefault(r.label, {"n": 0, "before_none": 0, "model_sends_on": 0})
        c["n"] += 1
        c[res["decision"]] = c.get(res["decision"], 0) + 1
        c["before_none"] += bool(res.get("unfamiliar"))
        x = preprocess(r.path, model.contract)  # the model's own say, without the guard
        c["model_sends_on"] += bool(model.predict(x)[0] >= model.threshold)
    return out


def run(model_path: Path, name: str, out_dir: Path, plain: Path | None = None) -> dict:
    model = EdgeModel(model_path)
    if model.guard is None:
        raise SystemExit(f"{model_path} has no guard: dermedge convert --add-guard it first")
    sets = {
        "skimage sample photos": (skimage_photos(), "flag"),
        "blank and flat frames": (flat_frames(), "flag"),
        "healthy skin crops (dermoscopy corners)": (skin_crops(), "flag"),
        "isic-mvb test folder (a training source)": (dataset(DATA / "isic-mvb" / "test"), "pass"),
        "Derm7pt (other dermatoscope)": (dataset(DATA / "derm7pt"), "pass"),
    }
    cut = model.guard.cutoff
    result, dist = {}, {}
    for label, (items, want) in sets.items():
        s, none = scores(model, items)
        flagged = float(np.mean(s > cut)) if s.size else float("nan")
        result[label] = {
            "n": int(s.size),
            "expect": want,
            "flagged": flagged,
            "no_decision": none,
            "passed": 1 - flagged,
            "median_score": float(np.median(s)) if s.size else None,
        }
        dist[label] = s
    report = {
        "model": str(model_path),
        "name": name,
        "cutoff": cut,
        "fit": (model.card or {}).get("guard", {}).get("fit"),
        "sets": result,
        "outcomes": {
            k: outcomes(model, DATA / k) for k in ("derm7pt", "isic2020") if (DATA / k).is_dir()
        },
    }
    if plain is not None:
        report["latency"] = latency(model_path, plain)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"guard_{name}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / f"guard_{name}.md", _markdown(report))
    _plot(dist, cut, out_dir / f"guard_{name}.png", name)
    return report


def latency(guarded: Path, plain: Path, runs: int = 300) -> dict:
    """Median ms of one image through predict + decide, guarded against its plain peer, the two
    interleaved in one process (A B A B ...) so that drift hits both alike."""
    models = {"plain": EdgeModel(plain, threads=1), "guarded": EdgeModel(guarded, threads=1)}
    size = models["plain"].contract.size
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(runs + 20):
        for k, m in models.items():
            t0 = time.perf_counter()
            prob, feats = m.predict_features(x)
            m.decide(float(prob[0]), feats, x[0])
            if i >= 20:  # warm-up
                times[k].append(1000 * (time.perf_counter() - t0))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"runs": runs, "threads": 1, "median_ms": med, "ratio": med["guarded"] / med["plain"]}


def _markdown(r: dict) -> str:
    lines = [
        f"# Unfamiliar-input guard: `{r['name']}`",
        "",
        f"Cut-off {r['cutoff']:.3f} (95% of the validation split passes). Model `{r['model']}`.",
        "",
        "| pictures | n | should | flagged (TNR for non-lesion sets) | passed | no decision "
        "| median score |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in r["sets"].items():
        lines.append(
            f"| {k} | {v['n']} | {v['expect']} | {100 * v['flagged']:.1f}% | "
            f"{100 * v['passed']:.1f}% | {100 * v.get('no_decision', 0):.1f}% | "
            f"{v['median_score']:.2f} |"
        )
    lines += [
        "",
        "Decisions on labelled sets (`cannot assess` sends the patient on like `refer`; `none` is",
        "no decision). *Before*: every flagged photo got no decision. *Model alone*: the share the",
        "model's probability refers, without any guard.",
        "",
        "| set | class | n | refer | cannot assess | routine | none (now) | none (before) "
        "| sent on now | model alone |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, per in r.get("outcomes", {}).items():
        for cls, c in sorted(per.items()):
            sent = c.get("refer", 0) + c.get("cannot assess", 0)
            lines.append(
                f"| {k} | {cls} | {c['n']} | {c.get('refer', 0)} | {c.get('cannot assess', 0)} | "
                f"{c.get('routine', 0)} | {c.get('none', 0)} | {c['before_none']} | "
                f"{sent / c['n']:.3f} | {c['model_sends_on'] / c['n']:.3f} |"
            )
    if "latency" in r:
        lat = r["latency"]
        lines += [
            "",
            f"Latency, one image through predict + decide, 1 thread, median of {lat['runs']} "
            f"interleaved runs: plain {lat['median_ms']['plain']:.2f} ms, guarded "
            f"{lat['median_ms']['guarded']:.2f} ms (ratio {lat['ratio']:.3f}; the issue allows 1.10).",
        ]
    return "\n".join(lines) + "\n"


def _plot(dist: dict[str, np.ndarray], cut: float, path: Path, name: str) -> None:
    fig = new_figure((7.0, 4.2))
    ax = fig.add_subplot(111)
    hi = max(float(np.percentile(np.concatenate(list(dist.values())), 99)), cut * 2)
    bins = np.linspace(0, hi, 60)
    for label, s in dist.items():
        ax.hist(np.clip(s, 0, hi), bins=bins, histtype="step", lw=1.6, density=True, label=label)
    ax.axvline(cut, c="k", ls="--", lw=1, label=f"cut-off {cut:.2f}")
    ax.set_xlabel("guard score (Mahalanobis distance per feature, nearest class)")
    ax.set_ylabel("density")
    ax.set_title(f"{name}: scores of lesion photos and of other pictures")
    ax.legend(fontsize=7)
    save_png(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--plain", type=Path, help="the same model without its guard: latency peer")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    print(_markdown(run(args.model, args.name, args.out, args.plain)))


if __name__ == "__main__":
    main()
