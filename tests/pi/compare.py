"""Compare two `--json` outputs of the same command (x86_64 reference vs emulated ARM).

    python tests/pi/compare.py REF.json ARM.json [--tol 0.005] [--name images]

Each file is one JSON document or JSON lines. Both are flattened to (path, value) leaves; the
structure and every string, int and bool must match exactly, floats within `--tol` (absolute;
guard scores also within `--guard-rel` of their value).
Leaves whose key looks like a timing or a host detail (ms, fps, latency, time, runtime, ...) are
skipped. Prints whether the probabilities are bit-identical, else the largest difference.

A decision may differ where it is borderline: a record (a top-level list item) whose `prob` is
within tolerance on both sides and within tolerance of its `threshold` may flip refer/routine
(and its label, which is decided at the same threshold),
and each such flip lets a summary's `decisions.*` counts differ by one more. Anything else must
match. Exit status: 0 equal within tolerance, 1 otherwise, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

IGNORE = (
    r"(^|_)(ms|msec|us|sec|secs|seconds|s|time|times|timing|timings|latency|elapsed|fps|duration"
    r"|timestamp|created|started|host|hostname|machine|platform|arch|threads|runtime|runtimes"
    r"|version|versions|python|speed|throughput)($|_)"
)


def load(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def flatten(doc: Any, ignore: re.Pattern[str], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(doc, dict):
        for key in doc:
            k = str(key).lower()
            if re.fullmatch(r"[a-z0-9_]+", k) and ignore.search(k):  # never skip a path key
                continue
            out += flatten(doc[key], ignore, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            out += flatten(item, ignore, f"{prefix}[{i}]")
    else:
        out.append((prefix, doc))
    return out


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def borderline_records(ref: Any, arm: Any, tol: float) -> set[int]:
    """Indices of top-level records whose probability sits within `tol` of their threshold."""
    if not (isinstance(ref, list) and isinstance(arm, list)) or tol <= 0:
        return set()
    out = set()
    for i, (a, b) in enumerate(zip(ref, arm, strict=False)):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            continue
        pa, pb, t = a.get("prob"), b.get("prob"), a.get("threshold")
        if not (is_number(pa) and is_number(pb) and is_number(t) and t == b.get("threshold")):
            continue
        if abs(pa - pb) <= tol and min(abs(pa - t), abs(pb - t)) <= tol:
            out.add(i)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref")
    ap.add_argument("arm")
    ap.add_argument("--tol", type=float, default=0.005)
    ap.add_argument(
        "--guard-rel",
        type=float,
        default=0.0,
        help="guard scores (a distance, not a probability) may also differ by this share of "
        "their value; the flag they set must still match",
    )
    ap.add_argument("--name", default="output")
    ap.add_argument("--ignore", default=IGNORE, help="regex of keys to skip")
    ap.add_argument("--show", action="store_true", help="print every probability")
    ap.add_argument("--min-probs", type=int, default=1, help="fail with fewer probabilities")
    args = ap.parse_args()
    ignore = re.compile(args.ignore)
    try:
        ref_doc, arm_doc = load(args.ref), load(args.arm)
        ref, arm = flatten(ref_doc, ignore), flatten(arm_doc, ignore)
    except (OSError, ValueError) as e:
        print(f"{args.name}: cannot read output: {e}")
        return 2

    problems: list[str] = []
    if [p for p, _ in ref] != [p for p, _ in arm]:
        only_ref = sorted({p for p, _ in ref} - {p for p, _ in arm})[:5]
        only_arm = sorted({p for p, _ in arm} - {p for p, _ in ref})[:5]
        print(
            f"{args.name}: output structure differs; only x86_64: {only_ref}; only ARM: {only_arm}"
        )
        return 1

    border = borderline_records(ref_doc, arm_doc, args.tol)
    ref_map, arm_map = dict(ref), dict(arm)
    flips = sorted(
        i for i in border if ref_map.get(f"[{i}].decision") != arm_map.get(f"[{i}].decision")
    )
    numbers = 0
    probs: list[tuple[str, float, float]] = []
    worst, worst_at = 0.0, ""
    identical = True
    for (path, a), (_, b) in zip(ref, arm, strict=True):
        if is_number(a) and is_number(b):
            numbers += 1
            if re.search(r"prob|p_malignant|score", path.lower()):
                probs.append((path, float(a), float(b)))
            if a != b:
                identical = False
                d = abs(float(a) - float(b)) if math.isfinite(a) and math.isfinite(b) else math.inf
                if d > worst:
                    worst, worst_at = d, path
                count_slack = len(flips) if re.search(r"decisions\.[a-z]+$", path) else 0
                allowed = max(args.tol, count_slack)
                if path.endswith("guard_score"):
                    allowed = max(allowed, args.guard_rel * max(abs(float(a)), abs(float(b))))
                if d > allowed:
                    problems.append(f"{path}: x86_64 {a!r} vs ARM {b!r} (|diff| {d:.3g})")
        elif type(a) is not type(b) or a != b:
            m = re.match(r"\[(\d+)\]\.(decision|label)$", path)  # the label is at the threshold too
            if not (m and int(m.group(1)) in flips):
                problems.append(f"{path}: x86_64 {a!r} vs ARM {b!r}")

    if len(probs) < args.min_probs:
        problems.append(
            f"found {len(probs)} probabilities to compare, expected >= {args.min_probs}"
        )
    if args.show:
        for path, a, b in probs:
            print(f"    {path}: x86_64 {a:.6f}  ARM {b:.6f}")
    verdict = (
        "bit-identical"
        if identical
        else f"max |diff| {worst:.3g} at {worst_at} (tolerance {args.tol:g})"
    )
    print(
        f"{args.name}: {len(probs)} probabilities, {numbers} numbers, {len(ref)} fields compared: "
        f"{verdict}"
    )
    for i in flips:
        print(
            f"  borderline: record [{i}] decision differs with P within {args.tol:g} of the threshold"
        )
    for p in problems[:10]:
        print(f"  MISMATCH {p}")
    if len(problems) > 10:
        print(f"  ... and {len(problems) - 10} more")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
