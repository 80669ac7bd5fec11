"""Synthetic data generator: every format readable to the same eyes, determinism, sizes,
the planted signal."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import annotations as A
from pipeline import selection as S
from pipeline import synthetic, synthetic_render

SIZE = (200, 300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    return synthetic.make_synthetic(out, n_patients=16, size_range=SIZE, seed=5)


def _eyes(t):
    return (t[["patient_id", "eye", "filename", "sex", "age", "keywords"]]
            .sort_values(["patient_id", "eye"]).reset_index(drop=True))


def test_every_format_reads_to_the_same_eyes(data):
    ref = A.read_annotations(data["per_patient_csv"])
    assert ref.attrs["format"] == "odir_per_patient"
    assert len(ref) == 32 and ref.patient_id.nunique() == 16
    for fmt, expect in (("per_patient_xlsx", "odir_per_patient"), ("full_df", "full_df"),
                        ("full_df_short", "full_df")):
        t = A.read_annotations(data[fmt])
        assert t.attrs["format"] == expect, fmt
        pd.testing.assert_frame_equal(_eyes(t), _eyes(ref), obj=fmt)
    oia = A.read_many(data["oia"])
    assert oia.attrs["formats"] == ["oia_odir"] * 3
    pd.testing.assert_frame_equal(_eyes(oia), _eyes(ref), obj="oia")
    split = dict(zip(oia.patient_id, oia.split))
    assert set(split.values()) <= {"train", "val", "test"}
    # the tree holds exactly the normal eyes, with the OIA split, no age
    tree = A.read_annotations(data["tree"])
    normal, _ = S.select(ref, "normal")
    got = tree[["patient_id", "eye", "sex"]].sort_values(["patient_id", "eye"])
    want = normal[["patient_id", "eye", "sex"]].sort_values(["patient_id", "eye"])
    assert got.values.tolist() == want.values.tolist()
    assert all(split[p] == s for p, s in zip(tree.patient_id, tree.split))
    for rel in tree.filename:
        assert os.path.isfile(os.path.join(data["tree"], rel))


def test_images_exist_with_camera_shape_and_dark_surround(data):
    t = A.read_annotations(data["full_df"])
    assert set(t.keywords.map(S.is_normal)) == {True, False}
    assert set(t.sex) == {"male", "female"}
    assert t.age.between(20, 85).all()
    for name in t.filename:
        with Image.open(os.path.join(data["images"], name)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            w, h = im.size
            assert SIZE[0] <= w <= SIZE[1]
            assert round(w / h, 1) in (1.3, 1.5)
            a = np.asarray(im)
            assert a[:, :3].mean() < 12 and a[:, -3:].mean() < 12  # dark surround
            assert a[h // 2, w // 2].mean() > 30  # fundus in the middle


def _digest(root):
    h = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            h[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return h


def test_byte_identical_for_same_args_and_different_for_other_seed(tmp_path, data):
    a = synthetic.make_synthetic(str(tmp_path / "a"), n_patients=16, size_range=SIZE, seed=5,
                                 workers=1)
    root = os.path.dirname(data["full_df"])
    assert _digest(os.path.dirname(a["full_df"])) == _digest(root)
    b = synthetic.make_synthetic(str(tmp_path / "b"), n_patients=16, size_range=SIZE, seed=6,
                                 formats=("full_df",))
    assert open(b["full_df"], "rb").read() != open(data["full_df"], "rb").read()
    assert open(data["full_df"], "rb").read().count(b"\r\n") == 33  # CRLF, as released
    with pytest.raises(FileExistsError, match="--overwrite"):
        synthetic.make_synthetic(str(tmp_path / "b"), n_patients=2, size_range=SIZE)
    with pytest.raises(ValueError, match="--formats"):
        synthetic.make_synthetic(str(tmp_path / "c"), n_patients=2, formats=("parquet",))


def test_signal_is_the_only_sex_difference():
    args = (260, 195, "left", "normal fundus")
    female = synthetic_render.render_fundus(args[0], args[1], False, args[2], args[3], 1.0, 7)
    male0 = synthetic_render.render_fundus(args[0], args[1], True, args[2], args[3], 0.0, 7)
    male1 = synthetic_render.render_fundus(args[0], args[1], True, args[2], args[3], 1.0, 7)
    assert np.array_equal(female, male0)  # signal 0: sex leaves no trace
    assert not np.array_equal(female, male1)
    # the male disc is brighter: the brightest patch gains
    assert male1.astype(float).sum(-1).max() > female.astype(float).sum(-1).max()
    assert male1.astype(float).mean() > female.astype(float).mean()


def test_workers_do_not_change_the_images(tmp_path):
    kw = dict(n_patients=3, size_range=SIZE, seed=2, formats=("full_df",))
    a = synthetic.make_synthetic(str(tmp_path / "a"), workers=1, **kw)
    b = synthetic.make_synthetic(str(tmp_path / "b"), workers=2, **kw)
    assert _digest(a["images"]) == _digest(b["images"])
    assert len(os.listdir(a["images"])) == 6


def test_job_writes_then_refuses_a_non_empty_output(tmp_path):
    """fundus-synth as a console job: exit 0 and a summary; the same --output again
    without --overwrite: exit 2, one line naming the flag, no traceback."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "tools.synth", f"--output={tmp_path / 'o'}", "--patients=2",
           "--min_width=100", "--max_width=120", "--workers=1", "--formats=full_df"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote 4 images" in r.stdout and "full_df:" in r.stdout
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "fundus-synth: error: --output=" in r.stderr and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr
