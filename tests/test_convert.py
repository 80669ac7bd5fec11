"""fundus-convert (tools/convert.py, run as the console job): exit codes, summary, CLI;
real-data acceptance (slow)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import tensorflow as tf

from pipeline import manifest as manifest_lib
from pipeline import schema, writer
from pipeline.synthetic import make_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(REPO, "..", "shared", "data", "odir5k-dev")
needs_dev = pytest.mark.skipif(not os.path.isdir(DEV), reason="odir5k-dev not present")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict:
    return make_synthetic(str(tmp_path_factory.mktemp("synth")), n_patients=12,
                          size_range=(160, 220), seed=5, formats=("full_df",))


def run_job(synth, out, *flags: str, annotations: str | None = None,
            images: str | None = None) -> tuple[int, str, str]:
    """``python -m tools.convert`` on the synthetic set (64 px, one worker, no progress
    line); returns (exit status, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tools.convert",
         f"--annotations={annotations or synth['full_df']}",
         f"--images={images or synth['images']}", f"--output={out}", "--image_size=64",
         "--workers=1", "--noprogress", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_exit_codes_and_summary(synth, tmp_path):
    rc, out, _ = run_job(synth, tmp_path / "a")
    assert rc == 0 and "converted" in out and "total" in out
    rc, out, _ = run_job(synth, tmp_path / "a")
    assert rc == 0 and "up to date" in out
    rc, _, err = run_job(synth, tmp_path / "a", "--seed=9")
    assert rc == 2 and "fundus-convert: error: --output=" in err and "--overwrite" in err
    assert "Traceback" not in err

    # one broken photo: converted, exit 0; with --strict exit 1 (output still written)
    img = tmp_path / "img"
    shutil.copytree(synth["images"], img)
    normal = sorted(f"{p['id']}_{e}.jpg" for p in synth["patients"] for e in ("left", "right")
                    if p[f"{e}_kw"] == "normal fundus")
    (img / normal[0]).write_bytes(b"")
    rc, out, _ = run_job(synth, tmp_path / "b", images=str(img))
    assert rc == 0 and "zero-byte file" in out
    rc, _, err = run_job(synth, tmp_path / "c", "--strict", images=str(img))
    assert rc == 1 and "fundus-convert: error: --strict" in err
    assert os.path.exists(tmp_path / "c" / "manifest.json")

    # nothing usable: exit 1
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_job(synth, tmp_path / "d", images=str(empty))
    assert rc == 1 and "nothing was converted" in err and "Traceback" not in err


def test_bad_annotations_exit_2(tmp_path, synth):
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,Patient Age\n1,50\n")
    rc, _, err = run_job(synth, tmp_path / "o", annotations=str(bad))
    assert rc == 2 and "bad.csv" in err and "Traceback" not in err


def test_bench_bound_line(synth, tmp_path):
    rc, out, _ = run_job(synth, tmp_path / "b", "--bench_bound")
    assert rc == 0 and "of the bound" in out


def test_cli_with_flagfile(synth, tmp_path):
    """The real console entry point: absl flags, --flagfile, exit status, files."""
    flagfile = tmp_path / "convert.flags"
    flagfile.write_text(f"--annotations={synth['full_df']}\n--images={synth['images']}\n"
                        f"--output={tmp_path / 'out'}\n--image_size=64\n--workers=2\n"
                        f"--num_shards=2,1,1\n--folds=2\n")
    proc = subprocess.run([sys.executable, "-m", "tools.convert", f"--flagfile={flagfile}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = manifest_lib.load(str(tmp_path / "out"))
    assert [len(m["splits"][s]["shards"]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert m["folds"] == 2 and m["flags"]["num_shards"] == [2, 1, 1]
    assert "total" in proc.stdout


# ---------------------------------------------------------------------------- real data

def _records(out: str, m: dict) -> pd.DataFrame:
    rows = []
    for split in m["splits"]:
        for path in manifest_lib.shard_paths(out, m, split):
            for r in tf.data.TFRecordDataset(path):
                d = schema.decode_record_from_bytes(r.numpy())
                rows.append({"split": split, "patient_id": d["patient/id"].decode(),
                             "eye": d["eye"].decode(), "sex": d["patient/sex"],
                             "age": d["patient/age"], "keywords": d["keywords"].decode(),
                             "filename": d["image/filename"].decode(),
                             "jpeg": d["image/encoded"]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def dev_full(tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("dev_full"))
    m = writer.convert(writer.ConvertConfig(
        annotations=[os.path.join(DEV, "full_df.csv")],
        images=[os.path.join(DEV, "preprocessed_images")], output=out, image_size=96,
        progress=False))
    return out, m


@pytest.mark.slow
@needs_dev
def test_dev_full_df_acceptance(dev_full):
    out, m = dev_full
    s = m["splits"]
    assert sum(v["images"] for v in s.values()) == 2125
    assert sum(v["male"] for v in s.values()) == 1157
    assert sum(v["female"] for v in s.values()) == 968
    assert sum(v["patients"] for v in s.values()) == 1362
    assert m["skipped"] == []
    recs = _records(out, m)
    assert len(recs) == 2125
    assert (recs.groupby("patient_id")["split"].nunique() == 1).all()  # patient-disjoint
    for split, v in s.items():
        for sh in v["shards"]:
            path = os.path.join(out, sh["path"])
            assert manifest_lib.sha256_file(path) == sh["sha256"]
            assert sum(1 for _ in tf.data.TFRecordDataset(path)) == sh["records"]


@pytest.mark.slow
@needs_dev
def test_dev_per_patient_csv_agrees_patient_by_patient(dev_full, tmp_path):
    out_full, m_full = dev_full
    out = str(tmp_path / "v2")
    m = writer.convert(writer.ConvertConfig(
        annotations=[os.path.join(DEV, "ODIR-5K_Training_Annotations(Updated)_V2.csv")],
        images=[os.path.join(DEV, "preprocessed_images")], output=out, image_size=96,
        progress=False))
    assert m["skipped"] == []
    a = _records(out_full, m_full).set_index(["patient_id", "eye"])
    b = _records(out, m).set_index(["patient_id", "eye"])
    shared = set(a.index.get_level_values(0)) & set(b.index.get_level_values(0))
    assert len(shared) > 1000
    a = a[a.index.get_level_values(0).isin(shared)].sort_index()
    b = b[b.index.get_level_values(0).isin(shared)].sort_index()
    assert list(a.index) == list(b.index)  # the same eyes of every shared patient
    for col in ("sex", "age", "keywords", "filename", "jpeg"):
        assert (a[col] == b[col]).all(), col


@pytest.mark.slow
@needs_dev
def test_dev_copy_with_five_broken_images(tmp_path):
    full = pd.read_csv(os.path.join(DEV, "full_df.csv"), dtype=str)
    ids = list(dict.fromkeys(full["ID"]))[:30]
    lines = open(os.path.join(DEV, "full_df.csv"), "rb").read().split(b"\r\n")
    keep = [lines[0]] + [ln for ln in lines[1:] if ln and ln.split(b",")[0].decode() in ids]
    ann = tmp_path / "full_df.csv"
    ann.write_bytes(b"\r\n".join(keep) + b"\r\n")
    img = tmp_path / "images"
    img.mkdir()
    sub = full[full["ID"].isin(ids)]
    for name in sub["filename"]:
        shutil.copy(os.path.join(DEV, "preprocessed_images", name), img / name)
    assert 40 <= len(os.listdir(img)) <= 60
    normal = sorted(n for n, l, r, fl, fr in zip(
        sub["filename"], sub["Left-Diagnostic Keywords"], sub["Right-Diagnostic Keywords"],
        sub["Left-Fundus"], sub["Right-Fundus"])
        if (l if n == fl else r) == "normal fundus")
    victims = dict(zip(normal[:5], ["missing file", "truncated or corrupt image",
                                    "zero-byte file", "not an image", "no fundus"]))
    for name, reason in victims.items():
        p = img / name
        if reason == "missing file":
            p.unlink()
        elif reason.startswith("truncated"):
            p.write_bytes(p.read_bytes()[:20000])
        elif reason == "zero-byte file":
            p.write_bytes(b"")
        elif reason == "not an image":
            p.write_text("not a photo")
        else:
            from PIL import Image
            Image.new("RGB", (512, 512), (0, 0, 0)).save(p, "JPEG", quality=95)
    out = str(tmp_path / "out")
    m = writer.convert(writer.ConvertConfig(annotations=[str(ann)], images=[str(img)],
                                            output=out, image_size=96, progress=False))
    got = {os.path.basename(s["file"]): s["reason"] for s in m["skipped"]}
    assert set(got) == set(victims)
    for name, reason in victims.items():
        assert got[name].startswith(reason), (name, got[name])
    assert sum(v["images"] for v in m["splits"].values()) == len(normal) - 5


@pytest.mark.slow
def test_sigkill_midway_then_rerun_is_byte_identical(tmp_path):
    """A real kill (SIGKILL once the first shard is in place), then the same command."""
    src = make_synthetic(str(tmp_path / "s"), n_patients=40, size_range=(200, 260), seed=2,
                         formats=("full_df",))
    args = [sys.executable, "-m", "tools.convert", f"--annotations={src['full_df']}",
            f"--images={src['images']}", "--image_size=64", "--workers=1",
            "--noprogress"]
    ref = tmp_path / "ref"  # uninterrupted, in-process (workers do not change the bytes)
    writer.convert(writer.ConvertConfig(annotations=[src["full_df"]], images=[src["images"]],
                                        output=str(ref), image_size=64, workers=2,
                                        progress=False))
    run = tmp_path / "run"
    proc = subprocess.Popen(args + [f"--output={run}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(run) and any(n.endswith(".tfrecord") for n in os.listdir(run)):
            proc.kill()
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    killed = proc.returncode != 0
    subprocess.run(args + [f"--output={run}"], cwd=REPO, check=True, capture_output=True,
                   timeout=300)
    names = sorted(os.listdir(ref))
    assert names == sorted(os.listdir(run))
    for n in names:
        assert (ref / n).read_bytes() == (run / n).read_bytes(), n
    if not killed:
        pytest.skip("the conversion finished before it could be killed")
