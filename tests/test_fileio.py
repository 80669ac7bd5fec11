"""pipeline.fileio: atomic writes keep the old file on failure and leave no temporary."""
import json
import math
import os

import pytest

from pipeline import fileio


def test_json_round_trip_and_no_temporary(tmp_path):
    path = str(tmp_path / "a.json")
    fileio.write_json(path, {"b": 1, "a": [1.5, None]})
    assert json.load(open(path)) == {"a": [1.5, None], "b": 1}
    assert open(path).read().endswith("\n")
    assert os.listdir(tmp_path) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "a.json")
    fileio.write_json(path, {"v": 1})
    with pytest.raises(ValueError):                     # strict JSON refuses NaN
        fileio.write_json(path, {"v": math.nan}, allow_nan=False)

    def half(tmp):
        with open(tmp, "w") as f:
            f.write("{")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError):
        fileio.write_atomic(path, half)
    assert json.load(open(path)) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_bytes(tmp_path):
    path = str(tmp_path / "m.bin")
    fileio.write_bytes(path, b"\x00\x01")
    assert open(path, "rb").read() == b"\x00\x01"
