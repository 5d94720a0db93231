"""edge-classify: classify skin-lesion photos, folders or a live camera with a dermedge .tflite.

A screening aid, never a diagnosis: each result is P(malignant), the likelier label, and the
decision at the model's threshold ("refer" / "routine").
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from dermedge import DISCLAIMER, __version__
from dermedge.data.contract import CROPS, ImageError, InputContract, load_rgb
from dermedge.data.index import IMAGE_SUFFIXES
from dermedge.data.io import entry_problem
from dermedge.edge.card import model_io, read_card
from dermedge.edge.files import atomic_write
from dermedge.edge.guard import MESSAGE as GUARD_MESSAGE
from dermedge.edge.photo import photo_warning
from dermedge.edge.runtime import CANNOT_ASSESS, EdgeError, EdgeModel, load_runtime
from dermedge.edge.safe_text import csv_row, printable

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
BUNDLED = ("default", "tiny")
CSV_FIELDS = [
    "file",
    "prob",
    "label",
    "decision",
    "threshold",
    "unfamiliar",
    "guard_score",
    "reason",
    "warning",
    "error",
    "disclaimer",
]


# how the table shows each decision: the ones that send the patient on stand out
DECISION_WORDS = {"refer": "REFER", CANNOT_ASSESS: "CANNOT ASSESS: refer"}


class Fatal(click.ClickException):
    """Cannot run at all (bad model, flags or output path): exit code 2."""

    exit_code = 2


def resolve_model(model: str) -> Path:
    """A .tflite path, or the file of a bundled model name (default, tiny)."""
    path = Path(model)
    if path.is_file():
        return path
    if model in BUNDLED:
        bundled = MODELS_DIR / f"{model}.tflite"
        if bundled.is_file():
            return bundled
        raise Fatal(
            f"no bundled model {model!r} in this install ({MODELS_DIR} has none yet); "
            "pass --model PATH to a dermedge .tflite"
        )
    raise Fatal(
        f"model file not found: {model} (pass --model PATH, or one of {', '.join(BUNDLED)})"
    )


def build_contract(
    path: Path, size: int | None, crop: str | None, allow_unsealed: bool = False
) -> InputContract | None:
    """The card's contract with --size/--crop applied; for a card-less model, from the flags."""
    try:
        card = read_card(path, allow_unsealed)
        if card is None:
            if crop is None:
                return None  # EdgeModel explains which flags to pass
            tensor = model_io(path)["inputs"][0]["shape"]
            return InputContract(size=size or int(tensor[1]), crop=crop)
    except ValueError as e:
        raise Fatal(f"{path}: {e}") from e
    if size is None and crop is None:
        return None  # the card's own
    base = InputContract.from_dict(card["input"])
    return replace(base, size=size or base.size, crop=crop or base.crop)


def load_model(
    model: str,
    threads: int | None,
    delegate: str | None,
    threshold: float | None,
    size: int | None,
    crop: str | None,
    xnnpack: bool,
    allow_unsealed: bool = False,
) -> EdgeModel:
    """Resolve, load and configure the model; Fatal with the reason if that fails."""
    path = resolve_model(model)
    try:
        contract = build_contract(path, size, crop, allow_unsealed)
        return EdgeModel(
            path,
            threads,
            delegate,
            contract,
            threshold,
            xnnpack=xnnpack,
            allow_unsealed=allow_unsealed,
        )
    except (EdgeError, ValueError) as e:
        raise Fatal(str(e)) from e


def _folder_images(folder: str) -> tuple[list[tuple[str, str | None]], int]:
    """(path, problem or None) for the images under a folder (recursive, hidden ones skipped;
    folder links are not followed, so a link loop cannot trap the walk), and how many other
    files it holds. Entries that cannot be read (dangling links, loops, FIFOs) are reported."""
    items: list[tuple[str, str | None]] = []
    others = 0
    for p, unreadable in _walk(Path(folder)):
        if unreadable:
            items.append((str(p), unreadable))
            continue
        why = entry_problem(p)
        if why is None and p.is_dir():
            if p.is_symlink():
                items.append((str(p), "link to a folder: not followed (give the folder itself)"))
            continue
        if why:
            items.append((str(p), why))
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            items.append((str(p), None))
        else:
            others += 1
    return items, others


def _walk(top: Path) -> list[tuple[Path, str | None]]:
    """(entry, None) for every entry under `top` but hidden ones, sorted, and (folder, why) for a
    folder that cannot be listed. Iterative, so a folder nested thousands deep is walked, not a
    RecursionError (Path.rglob and, before Python 3.12, os.walk recurse); links not followed."""
    found: list[tuple[Path, str | None]] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as err:
            if folder != top:
                found.append((folder, f"cannot list this folder: {err.strerror or err}"))
            continue
        for e in entries:
            path = Path(e.path)
            found.append((path, None))
            with contextlib.suppress(OSError):
                if e.is_dir(follow_symlinks=False):
                    stack.append(path)
    return sorted(found)


def _glob(pattern: str) -> list[str]:
    """Matches of a glob; `**` does not descend into linked folders (a link loop would never end)."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path(".")
    rest = str(Path(*parts[first:]))
    return sorted(str(p) for p in base.glob(rest))


def expand_inputs(args: tuple[str, ...]) -> tuple[list[tuple[str, str | None]], int]:
    """(path, error or None) per input: files as given, folders' images, glob matches."""
    items: list[tuple[str, str | None]] = []
    ignored = 0
    for arg in args:
        if os.path.isdir(arg):
            found, others = _folder_images(arg)
            ignored += others
            items += found or [(arg, "folder holds no image files")]
        elif not os.path.lexists(arg) and glob.has_magic(arg):
            try:
                matches = _glob(arg)
            except (RecursionError, OSError) as e:  # ** over a folder nested too deep
                why = "nested too deep" if isinstance(e, RecursionError) else e.strerror or e
                items.append((arg, f"cannot expand this pattern ({why}): give the folder"))
                continue
            if not matches:
                items.append((arg, "no files match this pattern"))
            sub, others = expand_inputs(tuple(matches))
            items += sub
            ignored += others
        else:
            items.append((arg, entry_problem(arg) if os.path.lexists(arg) else None))
    return list(dict.fromkeys(items)), ignored


def _result_row(path: str, model: EdgeModel) -> dict[str, Any]:
    """One image's result row (prob, label, decision, threshold, warnings), or its error."""
    try:
        img = load_rgb(path)
        result = model.classify(img)
    except ImageError as e:
        return {"file": path, "error": str(e)}
    prob = result["prob"]
    row = {**result, "file": path, "prob": None if prob is None else round(prob, 4)}
    row["threshold"] = model.threshold
    if result["decision"] == "none":  # no decision: the reason says why, no quality advice
        return row
    quality = photo_warning(img, model.contract.size)
    flag = GUARD_MESSAGE if result.get("unfamiliar") and "reason" not in result else None
    warnings = [w for w in (result.get("reason"), flag, quality) if w]
    return {**row, "warning": "; ".join(warnings)} if warnings else row


def _table_line(row: dict[str, Any]) -> str:
    """One result row as a line of the printed table (the decision in capitals when refer)."""
    if "error" in row:
        return f"{'FAILED':<9} {'-':>6}  {'-':<10} {row['file']}: {row['error']}"
    if row["decision"] == "none":  # no decision, so no probability either
        return f"{'none':<9} {'-':>6}  {'-':<10} {row['file']}  [{row.get('reason', '')}]"
    decision = DECISION_WORDS.get(row["decision"], row["decision"])
    line = f"{decision:<9} {row['prob']:>6.3f}  {row['label']:<10} {row['file']}"
    return f"{line}  [{row['warning']}]" if "warning" in row else line


def _check_csv_target(path: str) -> None:
    """Before the run, not after it: a --csv that cannot be written would lose every result."""
    if Path(path).is_dir():
        raise Fatal(
            f"--csv {path} is a folder: give a file name, e.g. {Path(path) / 'results.csv'}"
        )
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise Fatal(f"cannot write --csv {path}: folder {parent} is missing or not writable")


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """Write the result rows as CSV, atomically; Fatal when the file cannot be written."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(csv_row(r) for r in rows)  # no cell a spreadsheet would run as a formula
    try:
        atomic_write(path, buffer.getvalue().encode("utf-8", "surrogateescape"))
    except OSError as e:
        raise Fatal(f"cannot write --csv {path}: {e.strerror or e}") from e


def _progress(total: int) -> Any:
    """A tqdm bar on stderr for many files at a terminal, else None (tqdm is then not imported)."""
    if total < 2 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, leave=False)


def summary_line(rows: list[dict[str, Any]], model: EdgeModel, ignored: int) -> str:
    """The closing line: how many images got each decision (none hidden), failed, flagged."""
    count = {d: sum(r.get("decision") == d for r in rows) for d in ("refer", CANNOT_ASSESS)}
    routine = sum(r.get("decision") == "routine" for r in rows)
    none = sum(r.get("decision") == "none" for r in rows)
    failed = sum("error" in r for r in rows)
    summary = (
        f"{len(rows)} images: {count['refer']} refer, {count[CANNOT_ASSESS]} cannot assess "
        f"(refer), {routine} routine, {none} no decision (blank or not a lesion photo), "
        f"{failed} failed (threshold {model.threshold:.3f}, model {model.name})"
    )
    unfamiliar = sum(bool(r.get("unfamiliar")) for r in rows)
    if unfamiliar:
        summary += f"; {unfamiliar} unlike the training images"
    warned = sum("warning" in r and not r.get("unfamiliar") for r in rows)
    if warned:
        summary += f"; {warned} with a quality warning (low resolution or blurred)"
    if ignored:
        summary += f"; {ignored} non-image files in folders ignored"
    return summary


def classify_images(
    model: EdgeModel, args: tuple[str, ...], as_json: bool, csv_path: str | None
) -> int:
    """Classify files/folders/globs, print a table or JSON lines; the number that failed."""
    items, ignored = expand_inputs(args)
    out = sys.stdout
    note = sys.stderr if as_json else sys.stdout
    print(DISCLAIMER, file=note)
    if not as_json:
        print(f"{'decision':<9} {'P(mal)':>6}  {'label':<10} file", file=out, flush=True)
    rows = []
    bar = _progress(len(items))
    for path, error in items:
        row = {"file": path, "error": error} if error else _result_row(path, model)
        row["disclaimer"] = DISCLAIMER  # in every record a person may read (JSON, CSV)
        rows.append(row)
        line = json.dumps(row) if as_json else printable(_table_line(row))  # one row, one line
        if bar:
            bar.write(line, file=out)
            bar.update()
        else:
            print(line, file=out)
        out.flush()
    if bar:
        bar.close()
    failed = sum("error" in r for r in rows)
    print(summary_line(rows, model, ignored), file=note)
    if csv_path:
        _write_csv(csv_path, rows)
    return failed


def _camera_line(event: dict[str, Any]) -> str:
    """One camera session event (decision, quality, reconnect, other) as a printed line."""
    kind = event["event"]
    head = f"{event.get('t_s', 0):7.2f}s {event.get('frame', ''):>7}  "
    if kind == "decision":
        decision = DECISION_WORDS.get(event["decision"], event["decision"])
        saved = f"  saved {event['frame_file']}" if "frame_file" in event else ""
        return f"{head}{decision:<8} P(mal)={event['prob']:.3f} ({event['votes']}) {event['label']}{saved}"
    if kind == "quality":
        return f"{head}{event['reason']}"
    if kind == "reconnect":
        return (
            f"{head}source unavailable ({event['error']}); retry {event['attempt']}/"
            f"{event['of']} in {event['wait_s']:g} s"
        )
    return f"{head}{kind}: {event.get('error', '')}"


def _stop_on_signals() -> None:
    """Make SIGTERM and SIGINT raise KeyboardInterrupt, so the camera session ends as it does on
    Ctrl-C, also when started in the background (`cmd &` in a script starts it with SIGINT ignored,
    which Python would keep)."""

    def handler(signum: int, frame: Any) -> None:
        """Raise KeyboardInterrupt in place of the default SIGTERM exit."""
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_camera(model: EdgeModel, opts: dict[str, Any], as_json: bool) -> int:
    """Live session on --camera/--picamera; prints events and a summary; 1 if it ended by a fault."""
    from dermedge.edge import camera

    size = (opts["width"], opts["height"], opts["fps"])
    source: camera.FrameSource = (
        camera.PiCameraSource(*size)
        if opts["picamera"]
        else camera.OpenCVSource(opts["camera"], *size)
    )
    saver = camera.Saver(opts["save"]) if opts["save"] else None
    if saver and saver.cleaned:
        click.echo(
            f"removed {len(saver.cleaned)} unfinished file(s) of an interrupted session from "
            f"{saver.dir}: {', '.join(saver.cleaned[:3])}{' ...' if len(saver.cleaned) > 3 else ''}",
            err=True,
        )
    if saver and saver.others:
        running = ", ".join(f"{s} (pid {pid})" for s, pid in saver.others.items())
        click.echo(f"another session is saving into {saver.dir} too: {running}", err=True)
    preview = camera.Preview() if opts["preview"] else None
    options = camera.SessionOptions(
        smooth=opts["smooth"],
        max_frames=opts["max_frames"],
        duration=opts["duration"],
        reconnect=opts["reconnect"],
    )
    note = sys.stderr if as_json else sys.stdout
    print(DISCLAIMER, file=note, flush=True)

    def emit(event: dict[str, Any]) -> None:
        """Print one session event as a JSON line or a table line."""
        print(json.dumps(event) if as_json else printable(_camera_line(event)), flush=True)

    _stop_on_signals()
    try:
        summary = camera.Session(model, source, options, emit, saver, preview).run()
    except camera.SourceError as e:
        raise Fatal(str(e)) from e
    print(json.dumps(summary.to_dict()) if as_json else summary.text(), flush=True)
    return 1 if summary.fault else 0


def _as_dict(v: Any) -> dict[str, Any]:
    """`v` if it is a dict, else an empty one (a card field may be missing or malformed)."""
    return v if isinstance(v, dict) else {}


def _figure(v: Any) -> str:
    """A card figure with 3 decimals, or n/a when it is not a number."""
    return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "n/a"


def show_card(model: EdgeModel) -> None:
    """`edge-classify -v` alone: what the model card says of the threshold and the figures."""
    card = _as_dict(model.card)
    if not card:
        click.echo(f"{model.path}: no embedded model card (contract and threshold from the flags)")
        click.echo(DISCLAIMER)
        return
    policy = _as_dict(card.get("threshold_policy"))
    click.echo(
        printable(
            f"card      {card.get('name')} ({card.get('arch')}), quantization "
            f"{card.get('quantization', 'none')}, created {card.get('created')}"
        )
    )
    click.echo(
        printable(
            f"threshold {_figure(card.get('threshold'))}: refer at or above it; chosen on "
            f"{policy.get('chosen_on', 'n/a')} for sensitivity >= "
            f"{policy.get('target_sensitivity', 'n/a')}"
        )
    )
    test = _as_dict(_as_dict(card.get("metrics")).get("test"))
    if test:
        click.echo(
            f"internal  test split n={test.get('n')}: AUC {_figure(test.get('roc_auc'))}, "
            f"sens {_figure(test.get('recall'))}, spec {_figure(test.get('specificity'))}"
        )
    click.echo(DISCLAIMER)


def serve_model(model: str, opts: dict[str, Any]) -> None:
    """Hand over to the web server (dermedge.edge.serve, imported only for --serve)."""
    from dermedge.edge.serve import serve

    keys = ("host", "port", "tls_cert", "tls_key", "self_signed", "verbose")
    serve(str(resolve_model(model)), **{k: opts[k] for k in keys})


# Which options each mode takes: the one table; anything else given is an error, not ignored.
_COMMON = {"model", "threads", "delegate", "no_xnnpack", "verbose"}
_CLASSIFY = _COMMON | {"threshold", "size", "crop", "as_json", "allow_unsealed"}
MODE_OPTIONS = {
    "images": _CLASSIFY | {"csv_path"},
    "camera": _CLASSIFY | {"camera", "picamera", "width", "height", "fps", "smooth", "preview", "save",
                           "reconnect", "max_frames", "duration"},
    "serve": {"model", "verbose", "serve", "host", "port", "tls_cert", "tls_key", "self_signed"},
}  # fmt: skip


def _flag(ctx: click.Context, name: str) -> str:
    """The longest of option `name`'s spellings (e.g. --max-frames), for error messages."""
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


def check_mode_options(ctx: click.Context, mode: str) -> None:
    """Refuse options given on the command line that `mode` would silently ignore."""
    given = [
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    wrong = [_flag(ctx, n) for n in given if n not in MODE_OPTIONS[mode] and n != "inputs"]
    if ctx.params.get("camera") is not None and ctx.params.get("picamera"):
        wrong.append("--camera with --picamera")
    if wrong:
        where = {
            "images": "classifying images",
            "camera": "--camera/--picamera",
            "serve": "--serve",
        }[mode]
        raise click.UsageError(f"not used with {where}: {', '.join(wrong)}")


# --help lists the options by the modes that take them (from MODE_OPTIONS, so it cannot drift)
HELP_SECTIONS = {
    frozenset({"images", "camera", "serve"}): "All modes",
    frozenset({"images", "camera"}): "Photos and camera",
    frozenset({"images"}): "Photos (edge-classify IMG...)",
    frozenset({"camera"}): "Camera (--camera SRC, --picamera)",
    frozenset({"serve"}): "Phone server (--serve)",
}


class ModeCommand(click.Command):
    """A click command whose --help groups the options by mode."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Write the options in one help section per set of modes that take them."""
        sections: dict[str, list[tuple[str, str]]] = {t: [] for t in HELP_SECTIONS.values()}
        sections["Other"] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            modes = frozenset(m for m, names in MODE_OPTIONS.items() if param.name in names)
            sections[HELP_SECTIONS.get(modes, "Other")].append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _smooth(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    """Parse --smooth N/M into (N, M), N a majority of M; click.BadParameter otherwise."""
    try:
        n, m = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter("use N/M, e.g. 3/5") from None
    if not (0 < n <= m and 2 * n > m):
        raise click.BadParameter("need 0 < N <= M and N more than half of M, e.g. 3/5")
    return n, m


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Print the dermedge and TFLite runtime versions and exit (the eager --version callback)."""
    if not value or ctx.resilient_parsing:
        return
    try:
        runtime = load_runtime().name
    except EdgeError as e:
        runtime = f"none ({e})"
    click.echo(f"edge-classify (dermedge {__version__}), runtime {runtime}")
    ctx.exit()


@click.command(cls=ModeCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1)
@click.option(
    "-m",
    "--model",
    default="default",
    show_default=True,
    help="A .tflite file, or a bundled model name (default, tiny).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    help="Threads the interpreter runs the model on (decoding is not threaded; more threads "
    "than CPU cores make it slower, not faster) [CPU cores, max 4].",
)
@click.option(
    "--delegate", metavar="PATH", help="External delegate library (e.g. libedgetpu.so.1)."
)
@click.option("--no-xnnpack", is_flag=True, help="Run without the default XNNPACK delegate.")
@click.option(
    "--threshold", type=click.FloatRange(0, 1), help="Refer at/above this P(malignant) [card]."
)
@click.option("--size", type=click.IntRange(16, 2048), help="Input size override [card].")
@click.option("--crop", type=click.Choice(CROPS), help="Crop override [card].")
@click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout.")
@click.option("--csv", "csv_path", metavar="FILE", help="Also write the image results as CSV.")
@click.option(
    "--camera", metavar="SRC", help="Camera index, /dev/videoN, video file or stream URL."
)
@click.option("--picamera", is_flag=True, help="Raspberry Pi camera via picamera2.")
@click.option("--width", type=click.IntRange(1), help="Requested camera frame width.")
@click.option("--height", type=click.IntRange(1), help="Requested camera frame height.")
@click.option("--fps", type=click.FloatRange(0, min_open=True), help="Requested camera frame rate.")
@click.option(
    "--smooth",
    default="3/5",
    show_default=True,
    callback=_smooth,
    help="Decide when N of the last M good frames agree.",
)
@click.option(
    "--preview", is_flag=True, help="Show a preview window (needs a display and GUI OpenCV)."
)
@click.option("--save", metavar="DIR", help="Save frame, crop and record of each decision here.")
@click.option(
    "--reconnect",
    type=click.IntRange(0),
    default=0,
    is_flag=False,
    flag_value=5,
    help="Retry a camera that fails or drops, with backoff (N attempts, bare: 5).",
)
@click.option("--max-frames", type=click.IntRange(1), help="Stop after this many frames.")
@click.option(
    "--duration", type=click.FloatRange(0, min_open=True), help="Stop after this many seconds."
)
@click.option("--serve", is_flag=True, help="Serve the model to phones/browsers on the network.")
@click.option("--host", default="127.0.0.1", show_default=True, help="--serve address.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="--serve port."
)
@click.option("--tls-cert", metavar="PEM", help="--serve TLS certificate.")
@click.option("--tls-key", metavar="PEM", help="--serve TLS key.")
@click.option(
    "--self-signed", is_flag=True, help="--serve with a generated self-signed certificate."
)
@click.option(
    "--allow-unsealed",
    is_flag=True,
    help="Run a model whose card records no readable file digest (loud warning) [refuse].",
)
@click.option("-v", "--verbose", is_flag=True, help="Print model and runtime details.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_version,
    help="Show the version and the TFLite runtime, then exit.",
)
def main(inputs: tuple[str, ...], **opts: Any) -> None:
    """Classify skin-lesion photos (files, folders, globs) or a live camera with a dermedge model.

    A screening aid, never a diagnosis. Exit code 1 if any input failed or the camera session
    ended by a fault, 2 if it could not run at all.
    """
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not end the run
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    ctx = click.get_current_context()
    live = opts["camera"] is not None or opts["picamera"]
    check_mode_options(ctx, "serve" if opts["serve"] else "camera" if live else "images")
    if opts["serve"]:
        if inputs:
            raise click.UsageError("--serve takes no images: the phone classifies its own camera")
        serve_model(opts["model"], opts)
        return
    if live and inputs:
        raise click.UsageError("give either images/folders or --camera/--picamera, not both")
    if not live and not inputs and not opts["verbose"]:  # -v alone shows the model card
        raise click.UsageError("give images, folders or globs, --camera SRC, --picamera or --serve")
    if opts["csv_path"]:
        _check_csv_target(opts["csv_path"])
    model = load_model(
        opts["model"],
        opts["threads"],
        opts["delegate"],
        opts["threshold"],
        opts["size"],
        opts["crop"],
        not opts["no_xnnpack"],
        opts["allow_unsealed"],
    )
    if opts["verbose"]:
        click.echo(
            f"model {model.path} ({model.name}, {model.input_dtype} input, {model.contract.size}px "
            f"{model.contract.crop}"
            + (f" + margin {model.contract.margin}" if model.contract.margin else "")
            + f", threshold {model.threshold:.3f}); runtime {model.runtime}, "
            f"{model.threads} threads; unfamiliar-input guard "
            + (f"on (cut-off {model.guard.cutoff:.3f})" if model.guard else "none in this model"),
            err=True,
        )
        from dermedge.edge.card_text import calibration_lines, external_lines

        for line in calibration_lines(model.card):
            click.echo(f"calibrated: {line}", err=True)
        for line in external_lines(model.card):
            click.echo(f"external: {line}", err=True)
    if not live and not inputs:
        show_card(model)
        return
    try:
        failed = (
            run_camera(model, opts, opts["as_json"])
            if live
            else classify_images(model, inputs, opts["as_json"], opts["csv_path"])
        )
    except EdgeError as e:
        raise Fatal(str(e)) from e
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
