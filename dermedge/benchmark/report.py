"""Write a benchmark's results: results.csv, results.json, results.md and the PNG plots."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dermedge import DISCLAIMER
from dermedge.benchmark.machine import flag_summary
from dermedge.data.io import atomic_write_text
from dermedge.metrics import clean_json
from dermedge.plotting import new_figure, save_png
from dermedge.runs import format_table

CSV_FIELDS = (
    "model",
    "variant",
    "quantization",
    "runtime",
    "threads",
    "pareto",
    "rejected",
    "file",
    "file_mb",
    "import_ms",
    "load_ms",
    "first_ms",
    "n_runs",
    "median_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "min_ms",
    "max_ms",
    "q25_ms",
    "q75_ms",
    "iqr_ms",
    "iqr_rel",
    "throughput_ips",
    "batch_ips",
    "peak_rss_mb",
    "n_test",
    "threshold",
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "tp",
    "fp",
    "tn",
    "fn",
    "reference",
    "max_abs_diff_vs_ref",
    "decision_agreement",
    "tensorflow_loaded",
    "macs_m",
    "gmacs",
    "peak_kind",
    "peak_gmacs",
    "frac_peak",
    "machine_peak_gmacs",
    "frac_machine_peak",
    "warnings",
    "error",
)


def is_finite_number(v: Any) -> bool:
    """A real, finite number (not a bool, None or NaN): one that a table can show."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of rows no other row beats: lower-or-equal median latency and higher-or-equal AUC,
    one of them strictly. Rows without both numbers are left out."""
    pts = [
        (i, r["median_ms"], r["auc"])
        for i, r in enumerate(rows)
        if is_finite_number(r.get("median_ms")) and is_finite_number(r.get("auc"))
    ]
    front = []
    for i, lat, auc in pts:
        if not any((la <= lat and au >= auc) and (la < lat or au > auc) for _, la, au in pts):
            front.append(i)
    return sorted(front, key=lambda i: rows[i]["median_ms"])


def mark_pareto(results: dict[str, Any]) -> None:
    """Set each row's `pareto` flag: whether it is on the latency-vs-AUC Pareto front."""
    rows = results["rows"]
    front = set(pareto_front(rows))
    for i, r in enumerate(rows):
        r["pareto"] = i in front


def short_runtime(name: str | None) -> str:
    """A runtime name shortened for the table (e.g. `litert 2.3.0`), or '-' when unknown."""
    if not name:
        return "-"
    for long, short in (
        ("ai-edge-litert", "litert"),
        ("tflite-runtime", "tflite_rt"),
        ("onnxruntime", "ort"),
        ("tensorflow", "tf"),
    ):
        if name.startswith(long):
            name = short + name[len(long) :]
    return name.split(" / ")[0].split(" (")[0]


def fmt_number(v: Any, nd: int = 1) -> str:
    """`v` with `nd` decimals, or '-' where there is no number."""
    if not is_finite_number(v):
        return "-"
    return f"{v:.{nd}f}"


TABLE_HEADERS = (
    "model",
    "variant",
    "runtime",
    "thr",
    "MB",
    "load ms",
    "1st ms",
    "median ms",
    "p90 ms",
    "p99 ms",
    "IQR %",
    "img/s",
    "RSS MB",
    "AUC",
    "acc",
    "sens",
    "spec",
    "MMAC",
    "GMAC/s",
    "% peak",
    "% machine",
    "front",
    "flags",
)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table printed at the end and written to results.md."""
    return format_table([_table_row(r) for r in rows], TABLE_HEADERS)


def _row_flags(r: dict[str, Any]) -> list[str]:
    """The flags column of one row: failure, gate refusal, the short name of each warning."""
    flags = []
    if r.get("error"):
        flags.append("FAILED")
    if r.get("rejected"):
        flags.append("refused by convert gate")
    for w in r.get("warnings") or []:
        flags.append(w.split(":")[0])
    return flags


def _fmt_percent(r: dict[str, Any], key: str, nd: int) -> str:
    """Row field `key` (a fraction) as a percentage with `nd` decimals, or '-'."""
    return fmt_number(100 * r[key], nd) if is_finite_number(r.get(key)) else "-"


def _table_row(r: dict[str, Any]) -> list[str]:
    """One result row as the cells of `TABLE_HEADERS`."""
    return [
        r["model"],
        r["variant"],
        short_runtime(r.get("runtime")),
        str(r["threads"]),
        fmt_number(r.get("file_mb"), 2),
        fmt_number(r.get("load_ms"), 0),
        fmt_number(r.get("first_ms"), 1),
        fmt_number(r.get("median_ms"), 2),
        fmt_number(r.get("p90_ms"), 2),
        fmt_number(r.get("p99_ms"), 2),
        _fmt_percent(r, "iqr_rel", 0),
        fmt_number(r.get("throughput_ips"), 1),
        fmt_number(r.get("peak_rss_mb"), 0),
        fmt_number(r.get("auc"), 3),
        fmt_number(r.get("accuracy"), 3),
        fmt_number(r.get("sensitivity"), 3),
        fmt_number(r.get("specificity"), 3),
        fmt_number(r.get("macs_m"), 1),
        fmt_number(r.get("gmacs"), 1),
        _fmt_percent(r, "frac_peak", 1),
        _fmt_percent(r, "frac_machine_peak", 1),
        "*" if r.get("pareto") else "",
        ", ".join(_row_flags(r)),
    ]


def _peak_lines(peak: dict[str, Any]) -> list[str]:
    """The results.md lines on the measured peaks: the matrix multiply and GMAC/s per runtime."""
    if not peak.get("runtimes"):
        return ["- peak: not measured"]
    m, k, n = peak["shape"]
    lines = [
        f"- measured peak: {m}x{k} by {k}x{n} matrix multiply through each runtime "
        f"(fastest of {peak['runs']} runs, best of {peak.get('sessions', 1)} sessions: "
        "before and after the accuracy pass), GMAC/s:"
    ]
    for rt in peak["runtimes"].values():
        cells = [
            f"{dt} {t} thr {fmt_number(g)}" for dt in ("fp32", "int8") for t, g in rt[dt].items()
        ]
        lines.append(f"  - {short_runtime(rt.get('name'))}: " + ", ".join(cells or ["-"]))
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The results.md text: machine, method, table, summary, camera loop and notes."""
    mach, s = results["machine"], results["settings"]
    la = results.get("load_average", {})
    lines = [
        "# dermedge benchmark",
        "",
        f"- machine: {mach['cpu_model']} ({mach['machine']}), {mach['usable_cpus']} usable CPUs"
        f"{', virtual machine' if mach.get('hypervisor') else ''}; {flag_summary(mach['flags'])}; "
        f"{mach.get('mem_total_gb')} GB RAM; {mach['os']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()),
        f"- date: {mach['date']}; load average before/after: {la.get('before')} / {la.get('after')}",
        f"- timing: {s['runs']} timed single-image runs per row after {s['warmup']} warm-up, "
        f"{s['order']}; latency = {s['latency']}; img/s = {s['throughput']}",
        "- load ms: building the model object from its file, after the runtime was imported "
        "(import ms in the CSV); 1st ms: the first inference",
        f"- accuracy: on each model's test images at the model card's threshold "
        f"(batch {s['batch']}, {s['accuracy_threads']} thread(s)); RSS = peak resident memory "
        "of a process that only loads and runs that variant",
        "- compute: MMAC = million multiply-accumulates per image counted from the .tflite "
        "graph (conv, depthwise, fully-connected); GMAC/s = MMAC / median latency; % peak = "
        "GMAC/s over the peak of the same runtime at the same thread count (its int8 peak for "
        "int8 and dynamic-range variants, fp32 otherwise; % machine = over the best runtime's)",
        *_peak_lines(results["peak"]),
    ]
    for g, info in results["groups"].items():
        lines.append(
            f"- {g}: {info['test_images']} test images ({info['malignant']} malignant) "
            f"from {info.get('data') or info.get('manifest')}"
        )
    lines += [
        "",
        table(results["rows"]),
        "",
        "`front` marks the latency-vs-AUC Pareto front (no other row is both faster and more "
        "accurate). IQR % = interquartile range over the median; flags: wide spread "
        "(IQR > 10% of the median), heavy tail (p99 > 2x median).",
    ]
    lines += ["", "## Summary", *summary(results["rows"])]
    if results.get("camera"):
        lines += ["", camera_markdown(results["camera"])]
    if results.get("notes"):
        lines += ["", "## Notes", *[f"- {n}" for n in results["notes"]]]
    lines += ["", f"_{DISCLAIMER}_", ""]
    return "\n".join(lines)


def summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A few sentences a reader can act on: the front, the fastest row, int8 vs fp32."""
    out = []
    front = [rows[i] for i in pareto_front(rows)]
    if front:
        out.append(
            "- Pareto front (fastest first): "
            + "; ".join(
                f"{r['model']}/{r['variant']} at {r['threads']} thread(s) ({r['median_ms']:.1f} ms, "
                f"AUC {r['auc']:.3f})"
                for r in front
            )
            + "."
        )
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and is_finite_number(r.get("median_ms"))]
        if not mine:
            continue
        fast = min(mine, key=lambda r: r["median_ms"])
        line = (
            f"- {model}: fastest {fast['variant']} at {fast['threads']} thread(s), "
            f"{fast['median_ms']:.1f} ms median ({fast['throughput_ips']:.1f} img/s)"
        )
        aucs = [r["auc"] for r in mine if is_finite_number(r.get("auc"))]
        if aucs:
            line += f"; AUC {min(aucs):.3f}-{max(aucs):.3f} across variants"
        fr = [r["frac_peak"] for r in mine if is_finite_number(r.get("frac_peak"))]
        if fr:
            line += f"; {100 * min(fr):.0f}-{100 * max(fr):.0f}% of its runtime's peak"
        by = {(r["variant"], r["threads"]): r for r in mine}
        for t in sorted({r["threads"] for r in mine}):
            a, b = by.get(("tflite-fp32", t)), by.get(("tflite-int8", t))
            if a and b:
                line += (
                    f"; tflite-int8 is {a['median_ms'] / b['median_ms']:.2f}x the speed of fp32 "
                    f"at {t} thread(s)"
                )
                break
        out.append(line + ".")
    return out


def camera_markdown(cam: dict[str, Any]) -> str:
    """The camera-loop section of results.md: frames/s and a table of the time per stage."""
    lines = [
        f"## Camera loop ({cam.get('source')})",
        "",
        f"- model: {cam.get('model')} ({cam.get('runtime')}, {cam.get('threads')} thread(s)); "
        f"{cam.get('frames')} frames in {fmt_number(cam.get('seconds'), 2)} s = "
        f"**{fmt_number(cam.get('fps'), 1)} frames/s** (one frame every {fmt_number(cam.get('frame_period_ms'), 1)} "
        f"ms); {cam.get('classified')} classified, {cam.get('rejected')} rejected by the "
        "quality gate",
        "",
    ]
    rows = [
        [
            k,
            fmt_number(v.get("median_ms"), 2),
            fmt_number(v.get("p90_ms"), 2),
            fmt_number(v.get("mean_per_frame_ms"), 2),
            str(v.get("n_runs", 0)),
        ]
        for k, v in cam.get("stages", {}).items()
    ]
    lines.append(format_table(rows, ["stage", "median ms", "p90 ms", "mean ms per frame", "calls"]))
    lines.append(
        "\nPreprocess and inference run only on frames the quality gate passes. The loop "
        "prepares frame k (decode aside) in a worker thread while frame k-1 is inferred, "
        "so stage times need not add up to the frame period."
    )
    if cam.get("untimed"):
        lines.append(f"Not timed (not found in dermedge.edge.camera): {', '.join(cam['untimed'])}.")
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path, plots: bool = True) -> dict[str, Path]:
    """results.json/.csv/.md and (when matplotlib is installed) pareto.png and latency.png."""
    mark_pareto(results)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    if plots:
        try:
            paths["pareto"] = plot_pareto(results["rows"], out / "pareto.png")
            paths["latency"] = plot_latency(results, out / "latency.png")
            if results.get("camera"):
                paths["camera"] = plot_camera(results["camera"], out / "camera.png")
            results["plots"] = {k: v.name for k, v in paths.items() if v.suffix == ".png"}
        except ImportError as e:
            results.setdefault("notes", []).append(f"no plots: {e} (pip install matplotlib)")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results["rows"]:
        flat = {k: ("; ".join(v) if isinstance(v, list) else v) for k, v in clean_json(r).items()}
        flat = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in flat.items()}
        w.writerow(flat)
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["json"], json.dumps(clean_json(results), indent=1) + "\n")
    atomic_write_text(paths["md"], markdown(results))
    return paths


# --- plots (matplotlib object API on an Agg canvas: no pyplot state, no display) ---------------

COLORS = {
    "keras": "#7f7f7f",
    "tflite-fp32": "#1f77b4",
    "tflite-fp16": "#17becf",
    "tflite-dynamic": "#2ca02c",
    "tflite-int8": "#d62728",
    "onnx-fp32": "#9467bd",
    "onnx-int8": "#ff7f0e",
}
MARKERS = "oDs^vP*Xh"


def plot_pareto(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Median latency (log x, IQR as error bars) vs ROC AUC; marker area proportional to file size,
    colour = variant, shape = model, label = threads; the Pareto front drawn as a step line."""
    fig = new_figure((9.0, 6.0))
    ax = fig.add_subplot(111)
    pts = [
        r for r in rows if is_finite_number(r.get("median_ms")) and is_finite_number(r.get("auc"))
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    max_mb = max((r["file_mb"] for r in pts), default=1.0) or 1.0
    scale = 900.0 / max_mb  # points^2 per MB: the largest file gets 900 pt^2
    for r in pts:
        _plot_point(ax, r, MARKERS[models.index(r["model"]) % len(MARKERS)], scale)
    _plot_front(ax, [rows[i] for i in pareto_front(rows)])
    ax.set_xscale("log")
    ax.set_xlabel("median latency per image, ms (log; bars: IQR)")
    ax.set_ylabel("ROC AUC on the test split")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(handles=_pareto_legend(pts, models), fontsize=7, loc="best")
    ax.set_title(
        f"latency vs accuracy (marker area proportional to file size; largest {max_mb:.1f} MB)",
        fontsize=9,
    )
    return save_png(fig, path)


def _variant_color(variant: str) -> str:
    """The plot colour of a variant (its name before any ':'), olive for unknown ones."""
    return COLORS.get(variant.split(":")[0], "#bcbd22")


def _plot_point(ax: Any, r: dict[str, Any], marker: str, scale: float) -> None:
    """One row on the Pareto plot: IQR error bar, marker sized by file MB, thread label."""
    c = _variant_color(r["variant"])
    ax.errorbar(
        r["median_ms"],
        r["auc"],
        xerr=[[r["median_ms"] - r["q25_ms"]], [r["q75_ms"] - r["median_ms"]]],
        fmt="none",
        ecolor=c,
        alpha=0.6,
        lw=1,
    )
    ax.scatter(
        r["median_ms"],
        r["auc"],
        s=max(scale * r["file_mb"], 6.0),
        c=c,
        marker=marker,
        alpha=0.55,
        edgecolors="black" if r.get("pareto") else c,
        linewidths=1.2,
    )
    ax.annotate(
        f"t{r['threads']}",
        (r["median_ms"], r["auc"]),
        fontsize=6,
        xytext=(3, -8),
        textcoords="offset points",
    )


def _plot_front(ax: Any, front: Sequence[dict[str, Any]]) -> None:
    """The Pareto front (rows fastest first) as a dashed step line with a label per row."""
    if not front:
        return
    xs, ys = [front[0]["median_ms"]], [front[0]["auc"]]
    for r in front[1:]:
        xs += [r["median_ms"], r["median_ms"]]
        ys += [ys[-1], r["auc"]]
    ax.plot(xs, ys, "k--", lw=1, label="Pareto front")
    for r in front:
        ax.annotate(
            f"{r['model']}/{r['variant']} t{r['threads']}",
            (r["median_ms"], r["auc"]),
            fontsize=7,
            xytext=(5, 5),
            textcoords="offset points",
        )


def _pareto_legend(pts: Sequence[dict[str, Any]], models: Sequence[str]) -> list[Any]:
    """Legend handles: one colour per plotted variant, one marker shape per model, the front."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", color=_variant_color(v), label=v)
        for v in dict.fromkeys(r["variant"] for r in pts)
    ]
    handles += [
        Line2D([], [], ls="", marker=MARKERS[i % len(MARKERS)], color="black", mfc="none", label=m)
        for i, m in enumerate(models)
    ]
    handles += [Line2D([], [], ls="--", color="black", label="Pareto front")]
    return handles


def plot_latency(results: dict[str, Any], path: Path) -> Path:
    """Box plots of every row's single-image latencies (whiskers p1-p99, log scale)."""
    raw = results.get("raw_times_ms", {})
    rows = [r for r in results["rows"] if raw.get(f"{r['model']}/{r['variant']}@t{r['threads']}")]
    fig = new_figure((9.0, max(2.5, 0.28 * len(rows) + 1.2)))
    ax = fig.add_subplot(111)
    data = [raw[f"{r['model']}/{r['variant']}@t{r['threads']}"] for r in rows]
    labels = [f"{r['model']}/{r['variant']} t{r['threads']}" for r in rows]
    if data:
        bp = ax.boxplot(
            data,
            vert=False,
            whis=(1, 99),
            showfliers=True,
            patch_artist=True,
            flierprops={"markersize": 2, "alpha": 0.4},
        )
        for patch, r in zip(bp["boxes"], rows, strict=True):
            patch.set_facecolor(COLORS.get(r["variant"].split(":")[0], "#bcbd22"))
            patch.set_alpha(0.6)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
    ax.set_xlabel("latency per image, ms (log; box: IQR, whiskers: p1-p99)")
    n = results["settings"]["runs"]
    ax.set_title(f"latency distributions ({n} timed runs each, interleaved)", fontsize=9)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return save_png(fig, path)


def plot_camera(cam: dict[str, Any], path: Path) -> Path:
    """Mean time per frame of each stage of the camera loop (stacked), against the frame period."""
    fig = new_figure((7.0, 2.8))
    ax = fig.add_subplot(111)
    left = 0.0
    for i, (stage, st) in enumerate(cam.get("stages", {}).items()):
        v = st.get("mean_per_frame_ms") or 0.0
        ax.barh([1], [v], left=left, color=f"C{i}", label=f"{stage} {v:.1f} ms")
        left += v
    period = cam.get("frame_period_ms") or 0.0
    ax.barh([0], [period], color="#555555", label=f"frame period {period:.1f} ms")
    ax.set_yticks([0, 1], ["frame period", "stages"], fontsize=8)
    ax.set_xlabel("ms per frame (stages overlap: preparation runs beside inference)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.4))
    ax.set_title(f"camera loop: {fmt_number(cam.get('fps'), 1)} frames/s", fontsize=9)
    return save_png(fig, path)
