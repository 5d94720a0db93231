"""Field check: Derm7pt photos in a synthetic dermatoscope vignette, as one video, through --camera.

Each chosen photo becomes a short hand-held clip (the photo inside a dark circular field of view of
random centre and radius, drifting a pixel or two per frame, with sensor noise and flicker), with
dark frames between lesions. The clips are written as ONE real MJPG video and run through the same
camera session `edge-classify --camera FILE` uses (quality gate, N-of-M vote, the card threshold).
Every decision is mapped back to its lesion by frame index; a lesion without one is reported as
gate-refused or unvoted, never dropped. The field target (issue 26: the camera decides as the
photos do): benign lesions decided `refer` at most 70%, melanomas at least 90%.

    python benchmarks/field_video.py --model default        # -> runs/field_video/default/
    python benchmarks/field_video.py --model tiny --per-class 20 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dermedge.data.contract import load_rgb
from dermedge.data.index import Record, read_dataset
from dermedge.data.io import atomic_write_text
from dermedge.edge.camera import OpenCVSource, Session, SessionOptions
from dermedge.edge.cli import load_model
from dermedge.edge.quality import measure
from dermedge.edge.runtime import CANNOT_ASSESS, SENDS_ON

REPO = Path(__file__).resolve().parents[1]
SIZE = (640, 480)  # frame width, height
BORDER = 8.0  # luma of the dark border: near-black, not pure zero
CLASSES = ("benign", "melanoma")
TARGET = {"benign": 0.70, "melanoma": 0.90}  # refer at most / at least


def default_data() -> Path:
    """$DERMEDGE_DATA/derm7pt, else the shared data beside the checkout."""
    base = os.environ.get("DERMEDGE_DATA", REPO.parent / "shared" / "data")
    return Path(base) / "derm7pt"


# --- selection ---------------------------------------------------------------------------------


def lesion_class(record: Record) -> str | None:
    """'melanoma' (dx starting with melanoma), 'benign' (any benign dx), else None."""
    dx = (record.dx or "").lower()
    if dx.startswith("melanoma"):
        return "melanoma"
    return "benign" if record.label == "benign" else None


def allocate(counts: dict[str, int], n: int) -> dict[str, int]:
    """Split n across strata in proportion to their size (largest remainder), capped by size."""
    total = sum(counts.values())
    n = min(n, total)
    share = {k: n * c / total for k, c in counts.items()}
    out = {k: int(s) for k, s in share.items()}
    order = sorted(counts, key=lambda k: (out[k] - share[k], -counts[k], k))
    for k in order[: n - sum(out.values())]:
        out[k] += 1
    return out


def choose(records: list[Record], per_class: int, seed: int) -> list[tuple[str, Record]]:
    """A seeded selection of per_class lesions of each class, stratified by dx."""
    rng = np.random.default_rng(seed)
    chosen: list[tuple[str, Record]] = []
    for cls in CLASSES:
        by_dx: dict[str, list[Record]] = defaultdict(list)
        for r in sorted(records, key=lambda r: r.path):
            if lesion_class(r) == cls:
                by_dx[r.dx or "?"].append(r)
        quota = allocate({dx: len(rs) for dx, rs in by_dx.items()}, per_class)
        for dx in sorted(by_dx):
            picks = rng.choice(len(by_dx[dx]), quota[dx], replace=False)
            chosen += [(cls, by_dx[dx][i]) for i in sorted(picks)]
    order = rng.permutation(len(chosen))  # interleave the classes in the video
    return [chosen[i] for i in order]


# --- the synthetic dermatoscope ---------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """One lesion's dermatoscope view: field-of-view circle (pixels) and how the photo fills it."""

    cx: float
    cy: float
    radius: float
    edge: float  # width of the soft rim
    zoom: float  # photo side / circle diameter (>= 1: the photo covers the circle)


def random_scope(
    rng: np.random.Generator,
    size: tuple[int, int] = SIZE,
    radius: tuple[float, float] = (0.42, 0.58),
) -> Scope:
    """A random circle: radius a fraction of the frame height, centre within 6% of the middle."""
    w, h = size
    r = rng.uniform(*radius) * h
    return Scope(
        cx=w / 2 + rng.uniform(-0.06, 0.06) * w,
        cy=h / 2 + rng.uniform(-0.06, 0.06) * h,
        radius=r,
        edge=rng.uniform(0.02, 0.06) * r,
        zoom=rng.uniform(1.0, 1.15),
    )


def scope_mask(scope: Scope, size: tuple[int, int] = SIZE) -> np.ndarray:
    """HxWx1 float32 field of view: 1 inside the circle, 0 outside, a soft rim between."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.sqrt((xx - scope.cx) ** 2 + (yy - scope.cy) ** 2)
    return np.clip((scope.radius - dist) / scope.edge, 0.0, 1.0)[..., None]


def vignetted(
    rgb: np.ndarray,
    scope: Scope,
    mask: np.ndarray | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    gain: float = 1.0,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
    size: tuple[int, int] = SIZE,
) -> np.ndarray:
    """A BGR frame of an RGB photo seen through the scope, moved by shift/scale, with sensor noise."""
    w, h = size
    mask = scope_mask(scope, size) if mask is None else mask
    ph, pw = rgb.shape[:2]
    s = 2 * scope.radius * scope.zoom * scale / max(ph, pw)
    tx = scope.cx + shift[0] - s * pw / 2
    ty = scope.cy + shift[1] - s * ph / 2
    m = np.float32([[s, 0, tx], [0, s, ty]])
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    img = cv2.warpAffine(bgr, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = img.astype(np.float32) * (gain * mask) + BORDER * (1.0 - mask)
    if noise and rng is not None:
        out += rng.standard_normal(out.shape, dtype=np.float32) * noise
    return np.clip(out, 0, 255).astype(np.uint8)


def dark_frame(
    rng: np.random.Generator, noise: float = 3.0, size: tuple[int, int] = SIZE
) -> np.ndarray:
    """A frame between lesions: the scope off the skin, near-black with sensor noise."""
    w, h = size
    out = BORDER + rng.standard_normal((h, w, 3), dtype=np.float32) * noise
    return np.clip(out, 0, 255).astype(np.uint8)


def clip_frames(
    rgb: np.ndarray, rng: np.random.Generator, n: int, radius: tuple[float, float], noise: float
) -> tuple[list[np.ndarray], Scope]:
    """n hand-held frames of one photo: a fixed scope, the skin drifting and breathing under it."""
    scope = random_scope(rng, radius=radius)
    mask = scope_mask(scope)
    shift, scale, frames = np.zeros(2), 1.0, []
    for _ in range(n):
        shift = np.clip(shift + rng.normal(0, 1.2, 2), -12, 12)
        scale = float(np.clip(scale + rng.normal(0, 0.004), 0.97, 1.03))
        gain = rng.uniform(0.96, 1.04)
        frames.append(vignetted(rgb, scope, mask, tuple(shift), scale, gain, noise, rng))
    return frames, scope


# --- the video ----------------------------------------------------------------------------------


@dataclass
class Segment:
    """A stretch of the video: one lesion's clip, or dark frames (1-based session frame numbers)."""

    kind: str  # "lesion" or "gap"
    first: int
    last: int
    lesion: int | None = None  # index into the lesion list


class VideoOut:
    """An MJPG .avi being written, keeping count of its frames and stretches."""

    def __init__(self, path: Path, fps: float, quality: int = 90) -> None:
        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
        if not self.writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write an MJPG video at {path} (no video writer)")
        self.writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
        self.frames = 0
        self.segments: list[Segment] = []

    def add(self, frames: list[np.ndarray], kind: str, lesion: int | None = None) -> None:
        """Append frames as one segment."""
        for f in frames:
            self.writer.write(f)
        self.segments.append(Segment(kind, self.frames + 1, self.frames + len(frames), lesion))
        self.frames += len(frames)

    def close(self) -> None:
        self.writer.release()


def video_frame_count(path: Path) -> int:
    """Frames OpenCV decodes from the file (read through, not the header's claim)."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def write_video(
    photos: list[np.ndarray], path: Path, args: argparse.Namespace
) -> tuple[list[Segment], list[Scope]]:
    """The whole session video: a dark lead-in, then each clip followed by dark frames."""
    per_clip = max(1, round(args.clip_s * args.fps))
    video = VideoOut(path, args.fps)
    rng = np.random.default_rng([args.seed, 1])
    scopes = []
    try:
        video.add([dark_frame(rng) for _ in range(args.gap)], "gap")
        for i, rgb in enumerate(photos):
            frames, scope = clip_frames(rgb, rng, per_clip, tuple(args.radius), args.noise)
            video.add(frames, "lesion", i)
            video.add([dark_frame(rng) for _ in range(args.gap)], "gap")
            scopes.append(scope)
    finally:
        video.close()
    return video.segments, scopes


# --- the session and its attribution ------------------------------------------------------------


class RecordingSession(Session):
    """The camera session, also keeping each frame's P(malignant) or gate reason."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_frame: dict[int, tuple[float | None, str | None]] = {}

    def _finish(self, f: Any) -> None:
        """Run the session's own step, then note the frame's outcome."""
        super()._finish(f)
        classified = f.pixels is not None and f.quality.reason is None  # not gated, nor unfamiliar
        prob = float(self.state["prob"]) if classified else None
        self.per_frame[f.index] = (prob, f.quality.reason)


def run_session(model: Any, path: Path, smooth: tuple[int, int]) -> tuple[Any, list[dict], dict]:
    """The --camera FILE session: summary, events and per-frame outcomes."""
    events: list[dict[str, Any]] = []
    session = RecordingSession(
        model, OpenCVSource(str(path)), SessionOptions(smooth=smooth), events.append
    )
    summary = session.run()
    return summary, events, session.per_frame


def outcome(decisions: list[dict], classified: int, n_vote: int) -> str:
    """How a lesion ended: decided, gate refused (too few frames passed), or no vote formed."""
    if decisions:
        return "decided"
    return "gate refused" if classified < n_vote else "no vote"


def attribute(
    segments: list[Segment],
    events: list[dict],
    per_frame: dict,
    n_lesions: int,
    n_vote: int,
    threshold: float,
) -> tuple[list[dict], list[dict]]:
    """Per-lesion decisions and per-frame P by frame index; plus any decision outside a lesion."""
    owner = {}
    for seg in segments:
        for k in range(seg.first, seg.last + 1):
            owner[k] = seg.lesion
    rows: list[dict[str, Any]] = [{"decisions": []} for _ in range(n_lesions)]
    stray = []
    for e in events:
        if e["event"] != "decision":
            continue
        d = {k: e[k] for k in ("frame", "decision", "prob", "votes")}
        lesion = owner.get(e["frame"])
        (stray if lesion is None else rows[lesion]["decisions"]).append(d)
    for seg in segments:
        if seg.lesion is None:
            continue
        frames = [per_frame.get(k, (None, "not read")) for k in range(seg.first, seg.last + 1)]
        probs = [p for p, _ in frames if p is not None]
        row = rows[seg.lesion]
        row.update(
            first_frame=seg.first,
            last_frame=seg.last,
            frames=len(frames),
            classified=len(probs),
            gated=dict(sorted(_count(r for p, r in frames if p is None).items())),
            median_prob=float(np.median(probs)) if probs else None,
            frames_refer=sum(p >= threshold for p in probs),
        )
        row["outcome"] = outcome(row["decisions"], len(probs), n_vote)
        row["final"] = row["decisions"][-1]["decision"] if row["decisions"] else None
        row["frame_refer"] = (row["median_prob"] >= threshold) if probs else None
    return rows, stray


def _count(items: Any) -> dict[str, int]:
    """Occurrences of each item."""
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[x or "?"] += 1
    return dict(out)


# --- figures ------------------------------------------------------------------------------------


def _share(k: int, n: int) -> float | None:
    """k/n, or None when n is 0."""
    return k / n if n else None


def class_figures(lesions: list[dict], cls: str) -> dict[str, Any]:
    """Per-class figures for the session's decisions, its per-frame P and the still photo."""
    rows = [r for r in lesions if r["class"] == cls]
    decided = [r for r in rows if r["outcome"] == "decided"]
    refer = sum(r["final"] in SENDS_ON for r in decided)  # refer, or "cannot assess": refer
    seen = [r for r in rows if r["classified"]]
    frame_refer = sum(bool(r["frame_refer"]) for r in seen)
    frames = sum(r["classified"] for r in rows)
    frames_refer = sum(r["frames_refer"] for r in rows)
    photo_refer = sum(r["photo_prob"] >= r["threshold"] for r in rows)
    return {
        "lesions": len(rows),
        "decision": {
            "decided": len(decided),
            "refer": refer,
            "cannot_assess": sum(r["final"] == CANNOT_ASSESS for r in decided),
            "refer_of_decided": _share(refer, len(decided)),
            "refer_of_all": _share(refer, len(rows)),
            "changed_mind": sum(len({d["decision"] for d in r["decisions"]}) > 1 for r in decided),
            "gate_refused": sum(r["outcome"] == "gate refused" for r in rows),
            "gate_reasons": _count(
                max(r["gated"], key=r["gated"].get, default="clip too short")
                for r in rows
                if r["outcome"] == "gate refused"
            ),
            "no_vote": sum(r["outcome"] == "no vote" for r in rows),
        },
        "per_frame": {
            "classified": len(seen),
            "refer": frame_refer,
            "refer_of_classified": _share(frame_refer, len(seen)),
            "refer_of_all": _share(frame_refer, len(rows)),
            "never_classified": len(rows) - len(seen),
            "frames": frames,
            "frames_refer": _share(frames_refer, frames),
        },
        "photo": {
            "refer": photo_refer,
            "refer_of_all": _share(photo_refer, len(rows)),
            "gate_fails": _count(r["photo_gate"] for r in rows if r["photo_gate"]),
        },
    }


def target_check(per_class: dict[str, dict]) -> dict[str, Any]:
    """The field target on decisions: of the decided lesions, and counting undecided as missed."""
    b, m = per_class["benign"]["decision"], per_class["melanoma"]["decision"]

    def met(benign: float | None, melanoma: float | None) -> bool:
        return (
            benign is not None
            and melanoma is not None
            and benign <= TARGET["benign"]
            and melanoma >= TARGET["melanoma"]
        )

    return {
        "benign_refer_max": TARGET["benign"],
        "melanoma_refer_min": TARGET["melanoma"],
        "met": met(b["refer_of_decided"], m["refer_of_decided"]),
        "met_undecided_melanoma_missed": met(b["refer_of_decided"], m["refer_of_all"]),
    }


def _pct(x: float | None) -> str:
    """A share as a percentage, '-' if undefined."""
    return "-" if x is None else f"{100 * x:.0f}%"


def _counts(counts: dict[str, int]) -> str:
    """'glare 3, too dark 1', or 'none'."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def table(result: dict) -> str:
    """The markdown report: setup, per-class table, target verdict."""
    t = result["target"]
    lines = [
        f"# Field video: {result['model']['name']} ({result['model']['file']}), "
        f"threshold {result['model']['threshold']:.4f}, smoothing {result['smooth']}",
        "",
        f"{result['video']['frames']} frames ({result['video']['fps']:g} fps, "
        f"{SIZE[0]}x{SIZE[1]}, MJPG): {result['video']['frames_per_clip']} per lesion, "
        f"{result['video']['gap']} dark frames between lesions; vignette radius "
        f"{result['video']['radius'][0]:g}-{result['video']['radius'][1]:g} of the frame height. "
        f"Derm7pt, seed {result['seed']}. Session: {result['session']['text']}",
        "",
        "| class | lesions | decided | decided refer | refer / all | gate refused | no vote "
        "| per-frame P: classified | refer | never classified | frames refer | still photo refer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cls in CLASSES:
        c = result["per_class"][cls]
        d, f = c["decision"], c["per_frame"]
        lines.append(
            f"| {cls} | {c['lesions']} | {d['decided']} | {d['refer']} "
            f"({_pct(d['refer_of_decided'])}) | {_pct(d['refer_of_all'])} | {d['gate_refused']} "
            f"| {d['no_vote']} | {f['classified']} | {f['refer']} ({_pct(f['refer_of_classified'])}) "
            f"| {f['never_classified']} | {_pct(f['frames_refer'])} | {_pct(c['photo']['refer_of_all'])} |"
        )
    lines += [
        "",
        f"Target (benign decided refer <= {_pct(t['benign_refer_max'])}, melanoma >= "
        f"{_pct(t['melanoma_refer_min'])}): {'MET' if t['met'] else 'NOT MET'} on decided "
        f"lesions; {'met' if t['met_undecided_melanoma_missed'] else 'not met'} counting "
        "undecided melanomas as missed.",
        "",
        "decided: the lesion's last stable decision (N-of-M vote). gate refused: fewer frames "
        "passed the quality gate than the vote needs. no vote: enough frames, but no new "
        "decision (split vote, or no scene change seen from the previous lesion). per-frame P: "
        "a lesion refers when the median P(malignant) of its classified frames reaches the "
        "threshold. still photo: the original photo classified directly, no vignette.",
        f"Decisions outside any lesion (in the dark frames): {len(result['stray_decisions'])}.",
        "",
    ]
    for cls in CLASSES:
        c = result["per_class"][cls]
        lines.append(
            f"- {cls}: gate-refused lesions by main reason: "
            f"{_counts(c['decision']['gate_reasons'])}; still photos failing the gate by "
            f"themselves: {_counts(c['photo']['gate_fails'])}."
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> str | None:
    """Bar chart of refer rates per class; the reason if it could not be drawn."""
    try:
        from dermedge.plotting import new_figure, save_png
    except ImportError as e:  # pragma: no cover - matplotlib missing
        return f"no plot: {e}"
    try:
        fig = new_figure((6.0, 3.6))
    except ImportError as e:
        return f"no plot (matplotlib not installed): {e}"
    ax = fig.add_subplot()
    bars = [
        ("decision / decided", lambda c: c["decision"]["refer_of_decided"]),
        ("decision / all", lambda c: c["decision"]["refer_of_all"]),
        ("per-frame P", lambda c: c["per_frame"]["refer_of_classified"]),
        ("still photo", lambda c: c["photo"]["refer_of_all"]),
    ]
    width = 0.8 / len(bars)
    for j, (name, get) in enumerate(bars):
        xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(CLASSES))]
        ys = [get(result["per_class"][cls]) or 0.0 for cls in CLASSES]
        ax.bar(xs, ys, width, label=name)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y + 0.02, f"{y:.0%}", ha="center", fontsize=7)
    for i, cls in enumerate(CLASSES):
        ax.hlines(TARGET[cls], i - 0.45, i + 0.45, colors="k", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(CLASSES)))
    ax.set_xticklabels([f"{c} (n={result['per_class'][c]['lesions']})" for c in CLASSES])
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("referred")
    ax.set_title(f"{result['model']['name']}: Derm7pt field video (dashed: target)", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=len(bars), frameon=False)
    save_png(fig, path)
    return None


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="default, tiny or a .tflite PATH")
    ap.add_argument("--data", default=str(default_data()), help="the Derm7pt folder")
    ap.add_argument("--per-class", type=int, default=40, help="lesions of each class [40]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="output folder [runs/field_video/<model>/]")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--clip-s", type=float, default=1.2, help="seconds of video per lesion")
    ap.add_argument("--gap", type=int, default=6, help="dark frames before and between lesions")
    ap.add_argument(
        "--radius",
        type=float,
        nargs=2,
        default=(0.42, 0.58),
        metavar=("LO", "HI"),
        help="vignette radius range, fraction of the frame height",
    )
    ap.add_argument("--noise", type=float, default=3.0, help="sensor noise sigma (0..255)")
    ap.add_argument("--smooth", default="3/5", help="N/M vote, as edge-classify --smooth")
    ap.add_argument("--threads", type=int, help="interpreter threads [CLI default]")
    ap.add_argument("--crop", choices=("squash", "center", "fov"), help="as edge-classify --crop")
    return ap.parse_args(argv)


def model_label(model: str) -> str:
    """The output folder name for a --model value."""
    return model if not model.endswith(".tflite") else Path(model).stem


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build the video, run the camera session, write and print the report; returns the result."""
    args = parse_args(argv)
    n_vote, m_vote = (int(x) for x in args.smooth.split("/"))
    out = Path(args.out or REPO / "runs" / "field_video" / model_label(args.model))
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model, args.threads, None, None, None, args.crop, True)
    index = read_dataset(args.data)
    chosen = choose(index.records, args.per_class, args.seed)
    photos = [np.asarray(load_rgb(r.path)) for _, r in chosen]
    video_path = out / "field_video.avi"
    segments, scopes = write_video(photos, video_path, args)
    decoded = video_frame_count(video_path)
    summary, events, per_frame = run_session(model, video_path, (n_vote, m_vote))
    total = segments[-1].last
    if decoded != total or summary.frames != total or summary.corrupt:
        raise RuntimeError(
            f"{video_path}: wrote {total} frames, OpenCV decodes {decoded}, the session read "
            f"{summary.frames} ({summary.corrupt} corrupt): decisions cannot be mapped to lesions"
        )
    lesions, stray = attribute(segments, events, per_frame, len(chosen), n_vote, model.threshold)
    root = Path(args.data).resolve()
    for row, (cls, rec), scope, rgb in zip(lesions, chosen, scopes, photos, strict=True):
        row.update(
            {
                "class": cls,
                "dx": rec.dx,
                "path": os.path.relpath(rec.path, root),
                "scope": {k: round(v, 2) for k, v in asdict(scope).items()},
                "photo_prob": model.classify(rgb)["prob"],
                "photo_gate": measure(rgb).reason,
                "threshold": model.threshold,
            }
        )
    per_class = {cls: class_figures(lesions, cls) for cls in CLASSES}
    gaps = [s for s in segments if s.kind == "gap"]
    result = {
        "model": {
            "name": model.name,
            "file": str(model.path),
            "threshold": model.threshold,
            "runtime": model.runtime,
            "threads": model.threads,
        },
        "data": str(root),
        "seed": args.seed,
        "smooth": args.smooth,
        "video": {
            "file": str(video_path),
            "frames": total,
            "decoded_frames": decoded,
            "fps": args.fps,
            "size": list(SIZE),
            "frames_per_clip": max(1, round(args.clip_s * args.fps)),
            "gap": args.gap,
            "gap_frames": sum(s.last - s.first + 1 for s in gaps),
            "gap_frames_classified": sum(
                per_frame.get(k, (None, None))[0] is not None
                for s in gaps
                for k in range(s.first, s.last + 1)
            ),
            "radius": list(args.radius),
            "noise": args.noise,
        },
        "session": {**summary.to_dict(), "text": summary.text()},
        "per_class": per_class,
        "target": target_check(per_class),
        "stray_decisions": stray,
        "lesions": lesions,
    }
    atomic_write_text(out / "results.json", json.dumps(result, indent=1, default=float) + "\n")
    md = table(result)
    note = plot(result, out / "results.png")
    if note:
        md += f"\n{note}\n"
    atomic_write_text(out / "results.md", md)
    print(md, end="")
    return result


if __name__ == "__main__":
    main()
