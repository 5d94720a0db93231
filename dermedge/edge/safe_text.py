"""File names shown and written safely: a name may hold a newline (a forged table row), terminal
escapes or bidi overrides (text that reads otherwise than it is), and a CSV cell that starts with
= + - @ is a formula to a spreadsheet (`=cmd|...` runs a program on some). No dependencies."""

from __future__ import annotations

from typing import Any

_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_ESCAPES.update(
    {c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula


def printable(text: str) -> str:
    """`text` with control characters, line separators and bidi controls written as escapes
    (\\n, \\x1b, \\u202e): one printed line stays one line and reads as what it holds."""
    return text.translate(_ESCAPES)


def csv_cell(value: Any) -> Any:
    """A CSV value no spreadsheet runs: text starting with = + - @ tab or CR gets a leading '
    (the usual neutralisation; the text stays readable); other values as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """`csv_cell` on every value of a row."""
    return {k: csv_cell(v) for k, v in row.items()}
