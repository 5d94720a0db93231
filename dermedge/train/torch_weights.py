"""Read a legacy (non-zip) PyTorch ``state_dict`` file into numpy arrays, without torch.

The legacy format written by ``torch.save(..., _use_new_zipfile_serialization=False)`` is a
sequence of pickles followed by raw storage bytes:

1. the magic number, 2. the protocol version, 3. a ``sys_info`` dict,
4. the state dict itself (tensors are persistent references to storages),
5. the list of storage keys, then for every key in that order an int64
   little-endian ELEMENT count followed by the raw little-endian elements.

Pickles can run arbitrary code, so every pickle here goes through
:class:`RestrictedUnpickler`, which resolves only the handful of globals a
state dict needs and maps them to small local stand-ins; anything else raises
:class:`ForbiddenGlobalError`.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["ForbiddenGlobalError", "RestrictedUnpickler", "load_torch_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside the state-dict allow-list."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only the element dtype matters."""

    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes come after the pickles."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """A strided view into a storage, materialised once the storages are read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` that records the view, not a tensor."""
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Map each (module, name) a state dict may reference to its local stand-in."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(np.dtype(dtype).newbyteorder("<"))
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only state-dict globals and records storage references."""

    _ALLOWED = _allowed_globals()

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        """Return the stand-in for an allowed global; refuse everything else."""
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in self._ALLOWED))
            raise ForbiddenGlobalError(
                f"refusing to load global {module}.{name!s} from a torch weight file; "
                f"only these are allowed: {allowed}"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        """Record a ``('storage', type, key, location, numel, view)`` reference."""
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id in torch file: {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names no storage type: {pid!r}")
        if view_metadata is not None:
            raise pickle.UnpicklingError("storage views (pre-0.4 torch files) are not supported")
        ref = self.storages.setdefault(str(key), _StorageRef(str(key), storage_type.dtype, numel))
        if ref.dtype != storage_type.dtype or ref.numel != numel:
            raise pickle.UnpicklingError(f"storage {key} is referenced with conflicting types")
        return ref


def _restricted_load(file: BinaryIO) -> tuple[Any, dict[str, _StorageRef]]:
    """Unpickle one object from ``file`` with the allow-list; return it and its storages."""
    unpickler = RestrictedUnpickler(file)
    return unpickler.load(), unpickler.storages


def _read_exact(file: BinaryIO, nbytes: int) -> bytes:
    """Read exactly ``nbytes`` or fail: a short read means a truncated file."""
    data = file.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"torch weight file is truncated: wanted {nbytes} bytes, got {len(data)}")
    return data


def _read_storages(file: BinaryIO, keys: list[str], refs: dict[str, _StorageRef]) -> dict:
    """Read each storage in key-list order: int64 LE element count, then the elements."""
    arrays = {}
    for key in keys:
        if key not in refs:
            raise ValueError(f"storage {key} is listed but no tensor references it")
        ref = refs[key]
        (numel,) = np.frombuffer(_read_exact(file, 8), dtype="<i8")
        if numel != ref.numel:
            raise ValueError(f"storage {key} holds {numel} elements, pickle says {ref.numel}")
        arrays[key] = np.frombuffer(_read_exact(file, int(numel) * ref.dtype.itemsize), ref.dtype)
    return arrays


def _materialise(tensor: _TensorRef, storage: np.ndarray) -> np.ndarray:
    """Apply the stored offset and element strides, bounds-checked, and copy out."""
    shape, stride, offset = tensor.shape, tensor.stride, tensor.offset
    if len(shape) != len(stride) or min((*shape, *stride, offset)) < 0:
        raise ValueError(f"malformed shape/stride/offset in tensor {tensor}")
    last = (
        offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) if all(shape) else -1
    )
    if last >= storage.size:
        raise ValueError(f"tensor view {tensor} reaches past its storage of {storage.size}")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=shape,
        strides=tuple(s * itemsize for s in stride),
        writeable=False,
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")


def _check_header(file: BinaryIO) -> None:
    """Check the magic number and protocol pickles, and skip the sys_info pickle."""
    head = file.read(2)
    if head == b"PK":
        raise ValueError("this is a zip-format torch file; only the legacy format is supported")
    file.seek(-len(head), io.SEEK_CUR)
    magic, _ = _restricted_load(file)
    if magic != _MAGIC_NUMBER:
        raise ValueError("not a legacy torch file: bad magic number")
    protocol, _ = _restricted_load(file)
    if protocol != _PROTOCOL_VERSION:
        raise ValueError(f"unsupported torch protocol version {protocol}")
    sys_info, _ = _restricted_load(file)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError("big-endian torch files are not supported")


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a legacy torch ``state_dict`` file as ``{name: array}``, skipping BN batch counters."""
    with open(path, "rb") as file:
        _check_header(file)
        state, refs = _restricted_load(file)
        keys, _ = _restricted_load(file)
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise ValueError("torch file does not hold a state_dict")
        storages = _read_storages(file, [str(k) for k in keys], refs)
    arrays = {}
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        if not isinstance(tensor, _TensorRef):
            raise ValueError(f"state_dict entry {name} is not a tensor")
        arrays[name] = _materialise(tensor, storages[tensor.storage.key])
    return arrays
