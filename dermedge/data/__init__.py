"""Dataset reading, de-duplication, leakage-free splits and the preprocessing contract (TF-free)."""

from dermedge.data.contract import ImageError, InputContract, load_rgb, preprocess
from dermedge.data.index import Index, Problem, Record, read_dataset
from dermedge.data.manifest import ManifestError, read_manifest

__all__ = [
    "ImageError",
    "Index",
    "InputContract",
    "ManifestError",
    "Problem",
    "Record",
    "load_rgb",
    "preprocess",
    "read_dataset",
    "read_manifest",
]
