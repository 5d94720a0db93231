"""Find what to benchmark: the variants of a run (Keras, TFLite fp32/fp16/dynamic/int8) and its data.

A source is a train run (`runs/train/<name>`: model.keras, model_card.json, manifest.csv; its
converted variants are looked for in `runs/convert/<name>`), a convert run or any folder of
`.tflite` files, or single `.keras` / `.tflite` / `.onnx` files. Variants are grouped by model
(one group per run), each group with its test data: the run's split manifest (test split), or
`--data`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermedge.edge.card import model_io, read_card

QUANT_ORDER = ("fp32", "fp16", "dynamic", "int8")
VARIANT_ORDER = ("keras", *(f"tflite-{q}" for q in QUANT_ORDER), "onnx-fp32", "onnx-int8")
RUNTIME_OF = {"keras": "keras", "tflite": "litert", "onnx": "onnx"}


class SourceError(ValueError):
    """A source that holds nothing to benchmark, or whose card/data cannot be found."""


@dataclass
class Variant:
    """One model file under one runtime."""

    group: str  # the model (run) it belongs to
    name: str  # keras, tflite-fp32, ..., onnx-int8
    backend: str  # keras | litert | onnx (worker backends)
    path: Path
    quantization: str  # fp32 | fp16 | dynamic | int8
    card: dict[str, Any] | None = None
    macs_from: Path | None = None  # the .tflite whose graph gives the MAC count
    extra: dict[str, Any] = field(default_factory=dict)  # ONNX I/O quantization, export notes

    @property
    def label(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def size_bytes(self) -> int:
        """Bytes of the model file, or of all files under it for a SavedModel folder."""
        return _size(self.path)

    @property
    def base(self) -> str:
        """The variant kind without the file tag a duplicate gets (`tflite-int8:other`)."""
        return self.name.split(":")[0]

    def order(self) -> int:
        """Place of the variant's kind in VARIANT_ORDER (unknown kinds last), for sorting."""
        return VARIANT_ORDER.index(self.base) if self.base in VARIANT_ORDER else len(VARIANT_ORDER)

    @property
    def rejected(self) -> bool:
        """Refused by the converter's accuracy gate (benchmarked with --include-rejected)."""
        return bool(self.extra.get("rejected"))

    def mark_rejected(self) -> Variant:
        """Name it `<kind>:rejected` and flag it, so rows and files say so."""
        self.name, self.extra["rejected"] = f"{self.name}:rejected", True
        return self


@dataclass
class Group:
    """The variants of one model, with where its test data comes from."""

    name: str
    variants: list[Variant] = field(default_factory=list)
    manifest: Path | None = None
    card: dict[str, Any] | None = None  # the reference card (Keras run, else the fp32 .tflite)
    rejected: list[Path] = field(default_factory=list)  # variants the converter's gate refused

    def find(self, name: str) -> Variant | None:
        """The variant of that name, else the first of that kind (e.g. `tflite-int8:rejected`)."""
        exact = next((v for v in self.variants if v.name == name), None)
        return exact or next((v for v in self.variants if v.base == name), None)


def _size(path: Path) -> int:
    """Bytes of a file, or of all the files under a folder (a SavedModel)."""
    if path.is_dir():  # a SavedModel folder
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _quant_of(path: Path, card: dict[str, Any] | None) -> str:
    """The quantization the card records, else guessed from the file name (default fp32)."""
    q = (card or {}).get("quantization")
    if q in QUANT_ORDER:
        return str(q)
    m = re.search(r"(fp32|fp16|float16|float32|dynamic|drq|int8|uint8|full_int)", path.stem.lower())
    if not m:
        return "fp32"
    return {
        "float32": "fp32",
        "float16": "fp16",
        "drq": "dynamic",
        "uint8": "int8",
        "full_int": "int8",
    }.get(m.group(1), m.group(1))


def _json(path: Path) -> dict[str, Any] | None:
    """A JSON file's object, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tflite_variant(group: str, path: Path) -> Variant:
    """The LiteRT variant of a .tflite, with its embedded card or the `<file>.json` beside it."""
    card = read_card(path) or _json(path.with_name(path.name + ".json"))
    q = _quant_of(path, card)
    return Variant(group, f"tflite-{q}", "litert", path, q, card, macs_from=path)


def _keras_variant(group: str, path: Path) -> Variant:
    """The Keras variant of a model.keras, with the `model_card.json` beside it as its card."""
    card = _json(path.parent / "model_card.json")
    return Variant(group, "keras", "keras", path, "fp32", card)


def onnx_variant(
    group: str,
    path: Path,
    quantization: str,
    card: dict[str, Any] | None,
    macs_from: Path | None,
    extra: dict[str, Any] | None = None,
) -> Variant:
    """An ONNX Runtime variant named `onnx-<quantization>`."""
    return Variant(
        group,
        f"onnx-{quantization}",
        "onnx",
        path,
        quantization,
        card,
        macs_from,
        dict(extra or {}),
    )


def io_quant(tflite: Path) -> dict[str, Any]:
    """ONNX worker I/O quantization copied from a .tflite's input/output tensors."""
    io = model_io(tflite)
    out: dict[str, Any] = {}
    for key, tensors in (("input_quant", io["inputs"]), ("output_quant", io["outputs"])):
        t = tensors[0]
        if t["dtype"] in ("uint8", "int8") and t["quantization"]:
            out[key] = [
                t["quantization"]["scale"][0],
                t["quantization"]["zero_point"][0],
                t["dtype"],
            ]
    return out


def _convert_dir_for(train_dir: Path) -> Path | None:
    """`runs/convert/<name>` beside `runs/train/<name>`."""
    cand = train_dir.parent.parent / "convert" / train_dir.name
    return cand if cand.is_dir() else None


def _train_dir_for(folder: Path) -> Path | None:
    """`runs/train/<name>` beside `runs/convert/<name>`, when it holds a model.keras."""
    cand = folder.parent.parent / "train" / folder.name
    return cand if (cand / "model.keras").is_file() else None


def _group_name(folder: Path, card: dict[str, Any] | None) -> str:
    """The folder's name, else the card's model name, else "model"."""
    return folder.name if folder.name not in ("", ".") else str((card or {}).get("name") or "model")


def _dedupe(variants: list[Variant]) -> list[Variant]:
    """Each file once; a second file of the same kind is named `<kind>:<file stem>`."""
    seen: dict[str, Variant] = {}
    paths: set[Path] = set()
    for v in variants:
        if v.path.resolve() in paths:
            continue
        paths.add(v.path.resolve())
        if v.name in seen:
            v.name = f"{v.name}:{v.path.stem}"
        seen[v.name] = v
    return sorted(seen.values(), key=Variant.order)


def discover(sources: list[str | Path], include_rejected: bool = False) -> list[Group]:
    """Groups of variants from the sources (see the module docstring). With `include_rejected`,
    the variants a convert run's accuracy gate refused (`rejected/`) are benchmarked too, named
    `<kind>:rejected`; otherwise they are only listed in `Group.rejected`."""
    groups: dict[str, Group] = {}
    for src in map(Path, sources):
        if not src.exists():
            raise SourceError(f"{src}: no such file or folder")
        if src.is_file():
            name = src.parent.name if src.parent.name else src.stem
            g = groups.setdefault(name, Group(name))
            if src.suffix == ".tflite":
                g.variants.append(tflite_variant(name, src))
            elif src.suffix == ".keras":
                g.variants.append(_keras_variant(name, src))
            elif src.suffix == ".onnx":
                g.variants.append(onnx_variant(name, src, _quant_of(src, None), None, None))
            else:
                raise SourceError(f"{src}: not a .keras, .tflite or .onnx model")
            _find_manifest(g, src.parent)
            continue
        train = src if (src / "model.keras").is_file() else _train_dir_for(src)
        convert = _convert_dir_for(src) if train is src else src
        name = src.name
        g = groups.setdefault(name, Group(name))
        if train is not None:
            g.variants.append(_keras_variant(name, train / "model.keras"))
        for folder in (f for f in (train, convert) if f is not None):
            for p in sorted(folder.glob("*.tflite")):
                g.variants.append(tflite_variant(name, p))
            for p in sorted(folder.glob("*.onnx")):
                g.variants.append(onnx_variant(name, p, _quant_of(p, None), None, None))
            rejected = sorted((folder / "rejected").glob("*.tflite"))
            if include_rejected:
                g.variants += [tflite_variant(name, p).mark_rejected() for p in rejected]
            else:
                g.rejected += rejected
            _find_manifest(g, folder)
        if not g.variants:
            raise SourceError(f"{src}: no model.keras, .tflite or .onnx files found")
    for g in groups.values():
        g.variants = _dedupe(g.variants)
        ref = g.find("keras") or g.find("tflite-fp32") or g.variants[0]
        g.card = ref.card or next((v.card for v in g.variants if v.card), None)
        fp32 = g.find("tflite-fp32") or next((v for v in g.variants if v.backend == "litert"), None)
        for v in g.variants:
            if v.card is None:
                v.card = g.card
            if v.macs_from is None and fp32 is not None and v.quantization == "fp32":
                v.macs_from = fp32.path
    return list(groups.values())


def _find_manifest(group: Group, folder: Path) -> None:
    """Give the group the manifest.csv of `folder` or of its train run, unless it has one."""
    if group.manifest is not None:
        return
    for cand in (
        folder / "manifest.csv",
        *(f / "manifest.csv" for f in filter(None, (_train_dir_for(folder),))),
    ):
        if cand.is_file():
            group.manifest = cand
            return
