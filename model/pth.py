"""A reader of PyTorch's *legacy* ``.pth`` serialization, with the standard library and
numpy only (no torch).

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``, the only
format before PyTorch 1.6) is a byte stream of:

1. the pickled magic number ``0x1950a86a20f9469cfc6c``;
2. the pickled protocol version ``1001``;
3. a pickled ``sys_info`` dict (``little_endian``, ``type_sizes``, ...);
4. the pickled object, here an ``OrderedDict`` name -> tensor. Each tensor is
   ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
   requires_grad, backward_hooks[, metadata])`` whose ``storage`` is a persistent id
   ``('storage', storage_type, key, location, numel, view_metadata)``;
5. the pickled list of storage keys, in the order their data follows;
6. for each key: its element count as int64 little-endian, then ``numel`` elements of
   raw little-endian bytes.

:func:`read_state_dict` unpickles with ``find_class`` restricted to an allow-list (the
ordered dict, the tensor rebuild function and the ``torch.*Storage`` classes, mapped to
numpy dtypes), so no code of the file runs. Anything else (a zip-format file, an unknown
class, a truncated or inconsistent file, a big-endian file) raises :class:`PthFormatError`
naming the file and what was not understood.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001
ZIP_MAGIC = b"PK\x03\x04"

#: ``torch.<name>`` storage class -> numpy dtype of its elements (little-endian).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class PthFormatError(ValueError):
    """A ``.pth`` file this reader does not understand; the message names the file."""


class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: its name and numpy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage met in the pickle; ``data`` is filled from the stream's tail."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """``_rebuild_tensor_v2``'s arguments, materialised once the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 without a storage persistent id")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


class _Unpickler(pickle.Unpickler):
    """Unpickler with an allow-list of globals and the legacy storage persistent ids."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"class {module}.{name} is not on the allow-list")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"persistent id {pid!r:.80} is not a storage")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"storage type {stype!r:.80} is not a known storage")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError(f"storage {key} is a view (view_metadata "
                                         f"{pid[5]!r:.80}), not supported")
        key = str(key)
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, stype.dtype, int(numel))
        elif st.dtype != stype.dtype or st.numel != int(numel):
            raise pickle.UnpicklingError(f"storage {key} is declared twice, differently")
        return st


def _load(stream: io.BytesIO, what: str, storages: dict[str, _Storage] | None = None):
    try:
        return _Unpickler(stream, storages if storages is not None else {}).load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
            IndexError, KeyError, struct.error) as e:
        raise PthFormatError(f"{what}: {type(e).__name__}: {e}") from e


def _tensor(ref: _TensorRef, name: str) -> np.ndarray:
    st = ref.storage
    assert st.data is not None
    if len(ref.size) != len(ref.stride) or any(s < 0 for s in ref.size + ref.stride):
        raise PthFormatError(f"tensor {name!r}: size {ref.size} / stride {ref.stride} "
                             f"do not match")
    if 0 in ref.size:
        return np.zeros(ref.size, st.dtype.newbyteorder("="))
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if ref.offset < 0 or last >= st.numel:
        raise PthFormatError(f"tensor {name!r}: offset {ref.offset}, size {ref.size}, "
                             f"stride {ref.stride} reach past its storage of {st.numel} "
                             f"elements")
    item = st.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        st.data[ref.offset:], shape=ref.size, strides=tuple(s * item for s in ref.stride),
        writeable=False)
    return np.array(view, dtype=st.dtype.newbyteorder("="), order="C")   # 0-d stays 0-d


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a legacy ``.pth`` state dict at ``path``, by name, in file order.

    Returns ``{name: array}``: each array a fresh C-contiguous copy in the native byte
    order, of the storage's dtype (float32 for ``FloatStorage``, int64 for
    ``LongStorage``, ...), shaped by the tensor's size (0-d for scalars), honouring its
    stride and storage offset. Raises :class:`PthFormatError` (a ``ValueError``) naming
    ``path`` for a zip-format or otherwise unknown file, a class outside the allow-list,
    a truncated stream or inconsistent storages; OSError when it cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    where = f"{path}: not a legacy PyTorch .pth state dict"
    if raw.startswith(ZIP_MAGIC):
        raise PthFormatError(f"{where} (a zip archive: PyTorch >= 1.6's default format is "
                             f"not supported; re-save it with torch.save(..., "
                             f"_use_new_zipfile_serialization=False))")
    stream = io.BytesIO(raw)
    magic = _load(stream, f"{where} (no magic number)")
    if magic != MAGIC_NUMBER:
        raise PthFormatError(f"{where} (magic number {magic!r:.40}, expected "
                             f"{MAGIC_NUMBER:#x})")
    version = _load(stream, f"{path}: truncated after the magic number")
    if version != PROTOCOL_VERSION:
        raise PthFormatError(f"{path}: protocol version {version!r:.40} is not understood "
                             f"(expected {PROTOCOL_VERSION})")
    info = _load(stream, f"{path}: truncated before sys_info")
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise PthFormatError(f"{path}: sys_info {info!r:.120} is not a little-endian "
                             f"file's")
    storages: dict[str, _Storage] = {}
    obj = _load(stream, f"{path}: the pickled state dict", storages)
    if not isinstance(obj, dict):
        raise PthFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict "
                             f"(an ordered dict of tensors)")
    keys = _load(stream, f"{path}: truncated before the list of storage keys")
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise PthFormatError(f"{path}: the list of storage keys does not match the "
                             f"{len(storages)} storages of the state dict")
    for key in map(str, keys):
        st = storages[key]
        header = stream.read(8)
        if len(header) < 8:
            raise PthFormatError(f"{path}: truncated at storage {key}'s element count")
        (numel,) = struct.unpack("<q", header)
        if numel != st.numel:
            raise PthFormatError(f"{path}: storage {key} holds {numel} elements, the "
                                 f"state dict says {st.numel}")
        nbytes = numel * st.dtype.itemsize
        data = stream.read(nbytes)
        if len(data) < nbytes:
            raise PthFormatError(f"{path}: truncated in storage {key} ({len(data)} of "
                                 f"{nbytes} bytes)")
        st.data = np.frombuffer(data, st.dtype)
    if stream.read(1):
        raise PthFormatError(f"{path}: unexpected bytes after the last storage")
    out: dict[str, np.ndarray] = {}
    for name, ref in obj.items():
        if not isinstance(ref, _TensorRef):
            raise PthFormatError(f"{path}: entry {name!r} is a {type(ref).__name__}, "
                                 f"not a tensor")
        try:
            out[str(name)] = _tensor(ref, str(name))
        except PthFormatError as e:
            raise PthFormatError(f"{path}: {e}") from None
    return out
