"""The gate's report: the Keras reference row, report.json (source, data, tolerances, every row and
the verdict) and report.md (the table, failures with what to try, int8 I/O, notes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dermedge.convert import gate, quantize, source
from dermedge.metrics import clean_json

if TYPE_CHECKING:
    from dermedge.convert.pipeline import GateContext, Options


def reference_row(src: source.Source, ref: dict[str, Any]) -> dict[str, Any]:
    """The Keras model's row of the report: the reference every variant is compared with."""
    return {
        "variant": "keras",
        "file": str(src.model_path),
        "size_bytes": src.model_path.stat().st_size,
        **ref,
        "agreement": 1.0,
        "max_abs_dp": 0.0,
        "verdict": "reference",
        "failures": [],
    }


def report(
    ctx: GateContext, rows: list[dict[str, Any]], notes: list[str], passed: bool, seconds: float
) -> dict[str, Any]:
    """report.json: the source, the gate's data and tolerances, every row and the verdict."""
    src, conversion = ctx.src, ctx.conversion
    return clean_json(
        {
            "source": {
                "name": src.name,
                "run": str(src.run_dir) if src.run_dir else None,
                "model": str(src.model_path),
                "card": str(src.card_path),
            },
            "manifest": str(src.manifest),
            "manifest_sha256": conversion["manifest_sha256"],
            "split": "test",
            "test_images": int(len(ctx.y_test)),
            "threshold": src.threshold,
            "contract": src.contract.to_dict(),
            "tolerances": ctx.opts.tolerances.to_dict(),
            "contract_failures": ctx.contract_failures,
            "notes": notes,
            "rows": rows,
            "verdict": "pass" if passed else "fail",
            "converter": quantize.CONVERTER_PATH,
            "versions": conversion["versions"],
            "calibration": conversion.get("calibration"),
            "seconds": seconds,
        }
    )


def markdown(report: dict[str, Any], opts: Options) -> str:
    """report.md: the gate table, tolerances, failures with advice, int8 I/O, notes and verdict."""
    rows = report["rows"]
    lines = [
        f"# dermedge convert: {report['source']['name']}",
        "",
        f"Gate on the test split of `{report['manifest']}` ({report['test_images']} images, "
        f"manifest sha256 {report['manifest_sha256'][:12]}), threshold "
        f"{report['threshold']:.4f}, variants run through the edge runtime.",
        "",
        gate.markdown_table(rows),
        "",
        "Tolerances: AUC drop <= {max_auc_drop}, accuracy drop <= {max_acc_drop}, sensitivity "
        "drop <= {max_sens_drop}, agreement >= {min_agreement}.".format(**report["tolerances"]),
    ]
    failed = [r for r in rows if r.get("failures")]
    if report["contract_failures"]:
        lines += [
            "",
            "## Input contract (fails every variant)",
            *(f"- FAIL: {f}" for f in report["contract_failures"]),
            f"- try: {gate.advice('', report['contract_failures'])}",
        ]
    own = [(r, [f for f in r["failures"] if f not in report["contract_failures"]]) for r in failed]
    if any(fs for _, fs in own):
        lines += ["", "## Failures"]
        for r, fs in own:
            if not fs:
                continue
            lines += [f"- **{r['variant']}** ({r['verdict']}):", *(f"  - {f}" for f in fs)]
            if r.get("advice"):
                lines += [f"  - try: {r['advice']}"]
    int8 = next((r for r in rows if r["variant"] == "int8" and r.get("io_quantization")), None)
    if int8:
        q, cal = int8["io_quantization"], report.get("calibration") or {}
        lines += [
            "",
            f"int8: {q['input']['dtype']} input (scale {q['input'].get('scale')}, zero point "
            f"{q['input'].get('zero_point')}), {q['output']['dtype']} output; calibrated on "
            f"{cal.get('images')} training images {cal.get('per_class')}; float ops: "
            f"{int8.get('float_ops') or 'none'}.",
        ]
    if report.get("notes"):
        lines += ["", "## Notes", *(f"- {n}" for n in report["notes"])]
    lines += ["", f"Verdict: **{report['verdict'].upper()}**", ""]
    return "\n".join(lines)
