"""pipeline.writer: shards, manifest, splits, bad inputs, resume, up to date, refusal."""
from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import manifest as manifest_lib
from pipeline import bench, schema, sharding, writer
from pipeline.synthetic import make_synthetic

SIZE = 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict:
    """24 synthetic patients, small camera-shaped photos, every annotation format."""
    root = str(tmp_path_factory.mktemp("synth"))
    return make_synthetic(root, n_patients=24, size_range=(160, 240), seed=3,
                          formats=("full_df", "per_patient_csv", "oia", "tree"))


def config(synth: dict, out, **kw) -> writer.ConvertConfig:
    base = dict(annotations=[synth["full_df"]], images=[synth["images"]], output=str(out),
                image_size=SIZE, workers=1, progress=False)
    base.update(kw)
    return writer.ConvertConfig(**base)


def read_shard(path: str) -> list[dict]:
    return [schema.decode_record_from_bytes(r.numpy())
            for r in tf.data.TFRecordDataset(path)]


def files_state(d: str) -> dict[str, tuple[int, bytes]]:
    return {n: (os.stat(os.path.join(d, n)).st_mtime_ns, open(os.path.join(d, n), "rb").read())
            for n in sorted(os.listdir(d))}


def contents(d: str) -> dict[str, bytes]:
    return {n: b for n, (_, b) in files_state(d).items()}


@pytest.fixture(scope="module")
def converted(synth, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("conv"))
    return out, writer.convert(config(synth, out, workers=2))


def test_manifest_counts_shards_and_sha(converted, synth):
    out, m = converted
    n_normal = sum((p["left_kw"] == "normal fundus") + (p["right_kw"] == "normal fundus")
                   for p in synth["patients"])
    assert sum(s["images"] for s in m["splits"].values()) == n_normal
    assert m["skipped"] == []
    assert m["image_size"] == SIZE and m["selection"] == "normal"
    on_disk = sorted(n for n in os.listdir(out) if n.endswith(".tfrecord"))
    listed = []
    for split, s in m["splits"].items():
        assert s["male"] + s["female"] == s["images"] == s["normal_images"]
        n = len(s["shards"])
        for i, sh in enumerate(s["shards"]):
            assert sh["path"] == f"{split}-{i:05d}-of-{n:05d}.tfrecord"
            path = os.path.join(out, sh["path"])
            assert manifest_lib.sha256_file(path) == sh["sha256"]
            assert len(read_shard(path)) == sh["records"]
            listed.append(sh["path"])
        assert sum(sh["records"] for sh in s["shards"]) == s["images"]
    assert sorted(listed) == on_disk
    assert len(m["splits"]["train"]["shards"]) >= 2
    assert m["sources"][0]["sha256"] == manifest_lib.sha256_file(synth["full_df"])
    assert m["sources"][0]["format"] == "full_df"
    assert not any(".tmp" in n or n.startswith(".") for n in os.listdir(out))


def test_manifest_records_shard_bytes_and_verifies(converted):
    out, m = converted
    for s in m["splits"].values():
        for sh in s["shards"]:
            assert sh["bytes"] == os.path.getsize(os.path.join(out, sh["path"]))
    reports = manifest_lib.verify_shards(out)
    assert len(reports) == sum(len(s["shards"]) for s in m["splits"].values())
    assert all(r.ok for r in reports), [r for r in reports if not r.ok]
    manifest_lib.check_shards(out)


def test_schema_round_trip_matches_annotations(converted, synth):
    out, m = converted
    by_id = {p["id"]: p for p in synth["patients"]}
    recs = [r for split in m["splits"] for p in manifest_lib.shard_paths(out, m, split)
            for r in read_shard(p)]
    assert recs
    for r in recs:
        p = by_id[r["patient/id"].decode()]
        eye = r["eye"].decode()
        assert r["patient/sex"] == (1 if p["sex"] == "Male" else 0)
        assert r["patient/age"] == p["age"]
        assert r["image/filename"].decode() == f"{p['id']}_{eye}.jpg"
        assert r["keywords"] == b"normal fundus" and r["normal"] == 1 and r["fold"] == -1
        assert r["image/height"] == r["image/width"] == SIZE
        img = schema.decode_image(tf.constant(r["image/encoded"])).numpy()
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert img[SIZE // 2, SIZE // 2].max() > 40 and img[0, 0].max() < 40


def test_patient_disjoint_and_both_sexes_per_shard(converted):
    out, m = converted
    patients = {}
    for split in m["splits"]:
        ids = set()
        for path in manifest_lib.shard_paths(out, m, split):
            recs = read_shard(path)
            sexes = {r["patient/sex"] for r in recs}
            if len(m["splits"][split]["shards"]) <= min(m["splits"][split]["male"],
                                                        m["splits"][split]["female"]):
                assert sexes == {0, 1}, path
            ids |= {r["patient/id"] for r in recs}
        assert len(ids) == m["splits"][split]["patients"]
        patients[split] = ids
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_workers_do_not_change_bytes_and_rerun_is_up_to_date(converted, synth, tmp_path):
    out, _ = converted
    one = tmp_path / "one"
    writer.convert(config(synth, one, workers=1))
    assert contents(str(one)) == contents(out)
    before = files_state(str(one))
    res = writer.convert_with_status(config(synth, one, workers=2))
    assert res.status == "up to date" and res.processed == 0
    assert files_state(str(one)) == before  # nothing written, mtimes unchanged


def test_other_flags_refused_without_overwrite(converted, synth, tmp_path):
    out = tmp_path / "o"
    writer.convert(config(synth, out))
    before = files_state(str(out))
    with pytest.raises(writer.ConvertError, match="overwrite"):
        writer.convert(config(synth, out, seed=1))
    assert files_state(str(out)) == before
    (out / "notes.txt").write_text("mine")
    m = writer.convert(config(synth, out, seed=1, overwrite=True))
    assert m["flags"]["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"  # only the converter's files replaced


def test_foreign_directory_refused(synth, tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    with pytest.raises(writer.ConvertError, match="not a fundus-convert output"):
        writer.convert(config(synth, out))


class Killed(Exception):
    pass


def test_resume_after_kill_is_byte_identical(converted, synth, tmp_path, monkeypatch):
    out, _ = converted
    run = tmp_path / "run"
    seen = []

    def die(name):
        seen.append(name)
        if len(seen) == 3:
            raise Killed(name)

    monkeypatch.setattr(writer, "_after_shard", die)
    with pytest.raises(Killed):
        writer.convert(config(synth, run))
    names = os.listdir(run)
    assert writer.PROGRESS_NAME in names and manifest_lib.MANIFEST_NAME not in names
    # what a SIGKILL would also leave: a partial temporary and a damaged later shard
    (run / "train-00004-of-00008.tfrecord.tmp").write_bytes(b"partial")
    (run / "val-00000-of-00001.tfrecord").write_bytes(b"garbage")
    monkeypatch.setattr(writer, "_after_shard", lambda name: None)
    res = writer.convert_with_status(config(synth, run, workers=2))
    assert res.status == "resumed"
    n_total = sum(s["images"] for s in res.manifest["splits"].values())
    assert 0 < res.processed < n_total  # the three complete shards were kept
    assert contents(str(run)) == contents(out)


def test_killed_run_of_other_flags_is_refused(synth, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(writer, "_after_shard", lambda name: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        writer.convert(config(synth, run))
    monkeypatch.setattr(writer, "_after_shard", lambda name: None)
    with pytest.raises(writer.ConvertError, match="unfinished"):
        writer.convert(config(synth, run, jpeg_quality=80))


def test_damaged_finished_output_is_rebuilt(converted, synth, tmp_path):
    out, _ = converted
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "train-00001-of-00008.tfrecord").write_bytes(b"bitrot")
    res = writer.convert_with_status(config(synth, copy))
    assert res.status == "converted"
    assert contents(str(copy)) == contents(out)


def break_five(images: str, dst: str, patients: list[dict]) -> dict[str, str]:
    """Copy the photos and break five normal eyes; returns file name -> expected reason."""
    shutil.copytree(images, dst)
    normal = sorted(f"{p['id']}_{e}.jpg" for p in patients for e in ("left", "right")
                    if p[f"{e}_kw"] == "normal fundus")
    victims = dict(zip(normal[:5], ["missing file", "truncated or corrupt image",
                                    "zero-byte file", "not an image", "no fundus"]))
    for name, reason in victims.items():
        path = os.path.join(dst, name)
        if reason == "missing file":
            os.remove(path)
        elif reason.startswith("truncated"):
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
        elif reason == "zero-byte file":
            open(path, "wb").close()
        elif reason == "not an image":
            open(path, "w").write("<html>not found</html>")
        else:
            w, h = Image.open(path).size
            Image.new("RGB", (w, h), (1, 1, 1)).save(path, "JPEG")
    return victims


def test_bad_inputs_are_skipped_listed_and_the_rest_converts(converted, synth, tmp_path):
    _, good = converted
    victims = break_five(synth["images"], str(tmp_path / "img"), synth["patients"])
    m = writer.convert(config(synth, tmp_path / "out", images=[str(tmp_path / "img")]))
    got = {os.path.basename(s["file"]): s["reason"] for s in m["skipped"]}
    assert set(got) == set(victims)
    for name, reason in victims.items():
        assert got[name].startswith(reason), (name, got[name])
    n_good = sum(s["images"] for s in good["splits"].values())
    assert sum(s["images"] for s in m["splits"].values()) == n_good - 5
    assert sum(s["skipped"] for s in m["splits"].values()) == 5
    for split, s in m["splits"].items():
        assert sum(sh["records"] for sh in s["shards"]) == s["images"]


def test_folds_split_zeros_and_selection_all(synth, tmp_path):
    m = writer.convert(config(synth, tmp_path / "f", folds=3))
    recs = [r for split in m["splits"] for p in manifest_lib.shard_paths(
        str(tmp_path / "f"), m, split) for r in read_shard(p)]
    folds = pd.DataFrame([{"pid": r["patient/id"], "fold": r["fold"]} for r in recs])
    assert (folds.groupby("pid")["fold"].nunique() == 1).all()
    for split in ("train", "val"):
        assert sum(m["splits"][split]["folds"].values()) == m["splits"][split]["images"]
    assert m["splits"]["test"]["folds"] == {"0": 0, "1": 0, "2": 0}

    t = writer.convert(config(synth, tmp_path / "t", split="0,0,1"))
    assert t["splits"]["train"]["shards"] == [] and t["splits"]["train"]["images"] == 0
    assert t["splits"]["test"]["images"] > 0

    a = writer.convert(config(synth, tmp_path / "a", selection="all"))
    total = sum(s["images"] for s in a["splits"].values())
    assert total == 2 * len(synth["patients"])
    normal = sum(s["normal_images"] for s in a["splits"].values())
    assert 0 < normal < total


def test_source_split_wins(synth, tmp_path):
    m = writer.convert(config(synth, tmp_path / "oia", annotations=synth["oia"],
                              images=[synth["images"]]))
    want = {s: set() for s in ("train", "val", "test")}
    for p in synth["patients"]:
        if "normal fundus" in (p["left_kw"], p["right_kw"]):
            want[p["split"]].add(p["id"])
    for split in want:
        assert m["splits"][split]["patients"] == len(want[split])
    assert [s["format"] for s in m["sources"]] == ["oia_odir"] * 3

    tree = writer.convert(config(synth, tmp_path / "tree", annotations=[synth["tree"]],
                                 images=[]))
    for split in want:
        assert tree["splits"][split]["patients"] == len(want[split])


def test_bad_flags_are_clear(synth, tmp_path):
    with pytest.raises(writer.ConvertError, match="--images"):
        writer.convert(config(synth, tmp_path / "x", images=[]))
    with pytest.raises(writer.ConvertError, match="--images"):
        writer.convert(config(synth, tmp_path / "x", images=[str(tmp_path / "nope")]))
    with pytest.raises(writer.ConvertError, match="--image_size"):
        writer.convert(config(synth, tmp_path / "x", image_size=8))
    with pytest.raises(writer.ConvertError, match="--split"):
        writer.convert(config(synth, tmp_path / "x", split="0.5,0.5"))


def test_auto_num_shards():
    big = 100_000
    n = sharding.auto_num_shards("train", big, big // 2, big // 2, 512, 95)
    per = big * sharding.estimate_image_bytes(512, 95) / n
    assert 100e6 <= per <= 200e6
    assert sharding.auto_num_shards("train", 100, 50, 50, 512, 95) == 8
    assert sharding.auto_num_shards("val", 100, 50, 50, 512, 95) == 1
    assert sharding.auto_num_shards("train", 10, 7, 3, 512, 95) == 3  # rarer sex caps it
    assert sharding.auto_num_shards("train", 5, 5, 0, 512, 95) == 5
    assert sharding.auto_num_shards("test", 0, 0, 0, 512, 95) == 0


def test_deal_shards_spreads_sexes_and_sizes():
    table = pd.DataFrame({"patient_id": [str(i // 2) for i in range(40)],
                          "eye": ["left", "right"] * 20,
                          "sex": ["male"] * 26 + ["female"] * 14})
    dealt = sharding.deal_shards(table, 8, seed=0, salt=0)
    assert sorted(i for s in dealt for i in s) == list(range(40))
    assert max(map(len, dealt)) - min(map(len, dealt)) <= 1
    for s in dealt:
        assert {table.at[i, "sex"] for i in s} == {"male", "female"}
    # row order does not matter, only the (patient, eye, sex) content and the seed
    assert dealt == sharding.deal_shards(table.sample(frac=1, random_state=1), 8, 0, 0)
    assert dealt != sharding.deal_shards(table, 8, seed=1, salt=0)


def test_bench_bound_counts_every_file(synth):
    files = sorted(os.path.join(synth["images"], n) for n in os.listdir(synth["images"]))[:6]
    r = bench.bench_bound(files, SIZE, 95, workers=1)
    assert r["images"] == 6 and r["images_per_s"] > 0


def test_config_is_frozen_and_normalised(synth):
    cfg = writer.ConvertConfig(annotations="a.csv,b.csv", images=["i"], output="o")
    assert cfg.annotations == ("a.csv", "b.csv")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
