"""Reader: shapes, dtypes, labels with their images, exactly-once epochs, determinism,
filters before decode, caching, fold specs, input-context sharding and MirroredStrategy."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import manifest as manifest_lib
from pipeline import reader, schema

SIZE = 32


def _coded_jpeg(index: int, male: bool) -> bytes:
    """A solid image whose red channel encodes ``index`` and green the sex."""
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    arr[..., 0] = 8 + 4 * index      # index < 62
    arr[..., 1] = 220 if male else 40
    arr[..., 2] = 128
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=100, subsampling=0)
    return buf.getvalue()


def decode_index(images: np.ndarray) -> np.ndarray:
    """Record index from the mean red channel of each image."""
    return np.rint((images[..., 0].mean(axis=(1, 2)) - 8) / 4).astype(int)


def write_coded_data(root: str, n: int = 60, shards: int = 4, folds: int = 3,
                     abnormal_every: int = 5) -> str:
    """Train split of ``n`` records; record i: male when i % 3 == 0, fold i % folds,
    abnormal (and an *undecodable* JPEG) when i % abnormal_every == 4."""
    os.makedirs(root, exist_ok=True)
    recs = []
    for i in range(n):
        male = i % 3 == 0
        normal = i % abnormal_every != 4
        jpeg = _coded_jpeg(i, male) if normal else b"not a jpeg"
        recs.append(schema.EyeRecord(jpeg=jpeg, size=SIZE, filename=f"{i}_left.jpg",
                                     patient_id=str(i), age=30 + i, sex=int(male),
                                     eye="left", keywords="normal fundus" if normal else "x",
                                     normal=normal, fold=i % folds))
    entry = {"images": n, "patients": n, "male": sum(r.sex for r in recs),
             "female": sum(1 - r.sex for r in recs),
             "normal_images": sum(r.normal for r in recs),
             "folds": {str(k): sum(r.fold == k for r in recs) for k in range(folds)},
             "shards": []}
    for s in range(shards):
        name = f"train-{s:05d}-of-{shards:05d}.tfrecord"
        part = recs[s::shards]
        with tf.io.TFRecordWriter(os.path.join(root, name)) as w:
            for r in part:
                w.write(schema.encode_example(r))
        entry["shards"].append({"path": name, "records": len(part),
                                "sha256": manifest_lib.sha256_file(os.path.join(root, name))})
    man = {"format_version": 1, "image_size": SIZE, "folds": folds, "selection": "all",
           "splits": {"train": entry}, "flags": {}, "sources": [], "skipped": []}
    manifest_lib.save(root, man)
    return root


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> str:
    return write_coded_data(str(tmp_path_factory.mktemp("coded")))


def _normal_ids(n: int = 60) -> set[int]:
    return {i for i in range(n) if i % 5 != 4}


def test_shapes_and_dtypes(tiny_data):
    cfg = reader.ReadConfig(image_size=48, batch_size=8, with_meta=True,
                            sample_weights=True)
    ds = reader.make_dataset(tiny_data, "train", True, cfg)
    images, labels, weights, meta = next(iter(ds))
    assert images.dtype == tf.uint8 and images.shape == (8, 48, 48, 3)
    assert labels.dtype == tf.float32 and labels.shape == (8,)
    assert set(np.unique(labels.numpy())) <= {0.0, 1.0}
    assert weights.dtype == tf.float32 and weights.shape == (8,)
    assert meta["patient_id"].dtype == tf.string and meta["eye"].shape == (8,)
    assert set(meta["eye"].numpy()) <= {b"left", b"right"}
    assert ds.element_spec[0].shape == (8, 48, 48, 3)   # static for the model


def test_eval_keeps_partial_batch_and_plain_pairs(tiny_data):
    cfg = reader.ReadConfig(image_size=64, batch_size=5)
    batches = list(reader.make_dataset(tiny_data, "val", False, cfg))
    assert all(len(b) == 2 for b in batches)
    sizes = [int(b[0].shape[0]) for b in batches]
    assert sum(sizes) == 16 and sizes[-1] == 1        # 8 patients x 2 eyes, no drop


def test_labels_stay_with_images(coded):
    cfg = reader.ReadConfig(image_size=24, batch_size=7, with_meta=True, seed=3)
    for images, labels, meta in reader.make_dataset(coded, "train", True, cfg):
        img = images.numpy()
        idx = decode_index(img)
        male = img[..., 1].mean(axis=(1, 2)) > 128
        np.testing.assert_array_equal(labels.numpy(), male.astype(np.float32))
        names = [int(f.decode().split("_")[0]) for f in meta["filename"].numpy()]
        np.testing.assert_array_equal(idx, names)
        np.testing.assert_array_equal(labels.numpy(), (idx % 3 == 0).astype(np.float32))
        np.testing.assert_array_equal(meta["age"].numpy(), 30 + idx)


def test_every_record_once_per_epoch_and_reshuffled(coded):
    keep = _normal_ids()
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=6, seed=1)
    ds = reader.make_dataset(coded, "train", True, cfg)
    epochs = []
    for _ in range(2):
        seen = np.concatenate([decode_index(b[0].numpy()) for b in ds])
        assert len(seen) == len(keep) // 6 * 6                # drop_remainder
        assert len(set(seen.tolist())) == len(seen)           # nothing twice
        assert set(seen.tolist()) <= keep
        epochs.append(seen.tolist())
    assert epochs[0] != epochs[1]                             # reshuffled each epoch
    ev = reader.make_dataset(coded, "train", False, cfg)
    seen = np.concatenate([decode_index(b[0].numpy()) for b in ev])
    assert sorted(seen.tolist()) == sorted(keep)              # evaluation: all, once


def test_evaluation_order_deterministic(coded):
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=8, with_meta=True)
    def order():
        ds = reader.make_dataset(coded, "train", False, cfg)
        return [f for b in ds for f in b[2]["filename"].numpy().tolist()]
    first = order()
    assert first == order()
    ds = reader.make_dataset(coded, "train", False, cfg)
    assert [f for b in ds for f in b[2]["filename"].numpy().tolist()] == first
    assert [f for b in ds for f in b[2]["filename"].numpy().tolist()] == first


@pytest.mark.parametrize("parse", reader.PARSE_MODES)
def test_filters_run_before_decode(coded, parse):
    # abnormal records hold undecodable bytes: decoding one would raise
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=4, parse=parse)
    seen = np.concatenate([decode_index(b[0].numpy())
                           for b in reader.make_dataset(coded, "train", False, cfg)])
    assert sorted(seen.tolist()) == sorted(_normal_ids())
    assert reader.count_records(coded, "train") == len(_normal_ids())
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(reader.make_dataset(coded, "train", False,
                                 reader.ReadConfig(image_size=SIZE, normal_only=False,
                                                   parse=parse)))


def test_fold_filters_and_counts(coded):
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=64)
    inc = np.concatenate([decode_index(b[0].numpy()) for b in
                          reader.make_dataset(coded, "train", False, cfg, folds_include=[1])])
    assert sorted(inc.tolist()) == sorted(i for i in _normal_ids() if i % 3 == 1)
    exc = np.concatenate([decode_index(b[0].numpy()) for b in
                          reader.make_dataset(coded, "train", False, cfg, folds_exclude=[1])])
    assert sorted(exc.tolist()) == sorted(i for i in _normal_ids() if i % 3 != 1)
    counts = reader.class_counts(coded, "train", folds_exclude=[1])
    assert counts == {"male": sum(i % 3 == 0 for i in exc), "female":
                      sum(i % 3 != 0 for i in exc)}
    assert reader.count_records(coded, "train", normal_only=False) == 60


def test_sample_weights_balance_classes(coded):
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=64, sample_weights=True)
    (images, labels, weights), = list(reader.make_dataset(coded, "train", False, cfg))
    y, w = labels.numpy(), weights.numpy()
    n, n_m = len(y), int(y.sum())
    np.testing.assert_allclose(w[y == 1], n / (2 * n_m))
    np.testing.assert_allclose(w[y == 0], n / (2 * (n - n_m)))
    assert w[y == 1].sum() == pytest.approx(w[y == 0].sum())


def test_with_age_labels_and_weights(coded):
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=64, with_age=True,
                            sample_weights=True)
    images, labels, weights = next(iter(reader.make_dataset(coded, "train", False, cfg)))
    np.testing.assert_array_equal(labels["age"].numpy(), 30 + decode_index(images.numpy()))
    assert labels["sex"].dtype == tf.float32 and labels["age"].dtype == tf.float32
    assert set(weights) == {"sex", "age"} and np.all(weights["age"].numpy() == 1.0)


def test_file_cache_and_no_cache(coded, tmp_path):
    cache = tmp_path / "cache"
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=5, cache_budget_gb=0.0,
                            cache_dir=str(cache))
    ds = reader.make_dataset(coded, "train", True, cfg)
    first = sorted(np.concatenate([decode_index(b[0].numpy()) for b in ds]).tolist())
    assert any(p.name.startswith("fundus_train_") for p in cache.iterdir())
    second = sorted(np.concatenate([decode_index(b[0].numpy()) for b in ds]).tolist())
    assert len(first) == len(second) == len(_normal_ids()) // 5 * 5
    nocache = reader.ReadConfig(image_size=SIZE, batch_size=5, cache_budget_gb=0.0)
    assert sum(int(b[0].shape[0]) for b in
               reader.make_dataset(coded, "train", False, nocache)) == len(_normal_ids())


def test_training_split_specs(tiny_data, tiny_fold_data):
    tr, va = reader.training_split(tiny_data)
    assert tr.splits == ("train",) and va.splits == ("val",) and va.evaluation
    with pytest.raises(ValueError, match="--val_fold"):
        reader.training_split(tiny_data, val_fold=0)
    with pytest.raises(ValueError, match="--val_fold"):
        reader.training_split(tiny_fold_data, val_fold=3)
    tr, va = reader.training_split(tiny_fold_data, val_fold=2)
    n_tr = reader.count_records(tiny_fold_data, tr)
    n_va = reader.count_records(tiny_fold_data, va)
    man = manifest_lib.load(tiny_fold_data)
    assert n_tr + n_va == man["splits"]["train"]["images"] + man["splits"]["val"]["images"]
    assert n_va == (man["splits"]["train"]["folds"]["2"] + man["splits"]["val"]["folds"]["2"])
    cfg = reader.ReadConfig(image_size=32, batch_size=4, with_meta=True)
    val_ids = {p for b in reader.make_dataset(tiny_fold_data, va, False, cfg)
               for p in b[2]["patient_id"].numpy()}
    tr_ids = {p for b in reader.make_dataset(tiny_fold_data, tr, False, cfg)
              for p in b[2]["patient_id"].numpy()}
    assert val_ids and tr_ids and not val_ids & tr_ids      # patient-disjoint folds


def test_bad_inputs_name_the_problem(tiny_data, tmp_path):
    with pytest.raises(KeyError, match="no split 'nope'"):
        reader.make_dataset(tiny_data, "nope", True, reader.ReadConfig())
    with pytest.raises(ValueError, match="without --folds"):
        reader.make_dataset(tiny_data, "train", True, reader.ReadConfig(), folds_include=[0])
    with pytest.raises(FileNotFoundError, match="manifest"):
        reader.make_dataset(str(tmp_path), "train", True, reader.ReadConfig())
    with pytest.raises(ValueError, match="--batch_size"):
        reader.ReadConfig(batch_size=0)


def test_public_filter_helpers(tiny_fold_data):
    """keep_mask / normal_filter / shard_files: the reader's own filter, shared with the
    prefix cache (model/prefix_cache.py)."""
    parsed = {"normal": tf.constant([1, 0, 1, 1], tf.int64),
              "fold": tf.constant([0, 1, 2, -1], tf.int64)}
    train = reader.SplitSpec(("train",), folds_exclude=(2,))
    assert not reader.normal_filter(train, normal_only=False)
    assert reader.normal_filter(train, normal_only=True)
    assert reader.normal_filter(reader.SplitSpec(("val",), evaluation=True), False)
    keep = reader.keep_mask(parsed, train, by_normal=False, by_fold=True).numpy()
    assert keep.tolist() == [True, True, False, True]
    keep = reader.keep_mask(parsed, train, by_normal=True, by_fold=True).numpy()
    assert keep.tolist() == [True, False, False, True]
    val = reader.SplitSpec(("val",), folds_include=(0, 1), evaluation=True)
    assert reader.keep_mask(parsed, val, False, True).numpy().tolist() == [
        True, True, False, False]
    man = manifest_lib.load(tiny_fold_data)
    files = reader.shard_files(tiny_fold_data, man, reader.SplitSpec(("train", "val")))
    listed = [e["path"] for s in ("train", "val") for e in man["splits"][s]["shards"]
              if int(e.get("records", 1)) > 0]
    assert files == [os.path.join(tiny_fold_data, p) for p in listed]
    os.rename(files[0], files[0] + ".moved")
    try:
        with pytest.raises(FileNotFoundError, match="missing shards"):
            reader.shard_files(tiny_fold_data, man, reader.SplitSpec(("train",)))
    finally:
        os.rename(files[0] + ".moved", files[0])


@pytest.mark.parametrize("shards", [4, 1])
def test_input_context_shards_disjointly(tmp_path, shards):
    root = write_coded_data(str(tmp_path / "d"), n=40, shards=shards)
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=8)
    parts = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        ds = reader.make_dataset(root, "train", False, cfg, input_context=ctx)
        batches = list(ds)
        assert max(int(b[0].shape[0]) for b in batches) == 4    # per-replica batch
        parts.append(set(np.concatenate([decode_index(b[0].numpy()) for b in batches])))
    assert not parts[0] & parts[1]
    assert parts[0] | parts[1] == _normal_ids(40)


def test_training_input_pipelines_by_record_are_disjoint(tmp_path):
    # 3 shards, 4 input pipelines: sharded by record, so the (otherwise
    # non-deterministic) training interleave must give every pipeline one record order
    root = write_coded_data(str(tmp_path / "d"), n=40, shards=3)
    cfg = reader.ReadConfig(image_size=SIZE, batch_size=4, seed=3)
    parts = []
    for pid in range(4):
        ctx = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=pid,
                                         num_replicas_in_sync=4)
        ds = reader.make_dataset(root, "train", True, cfg, input_context=ctx)
        parts.append([i for b in ds for i in decode_index(b[0].numpy())])
    seen = [i for p in parts for i in p]
    assert len(seen) == len(set(seen)) > 0      # no record in two pipelines


@pytest.mark.parametrize("declared", [9, 11])
def test_gather_reader_rejects_a_wrong_record_count(declared):
    elements = tf.data.Dataset.from_tensor_slices(
        {"image": tf.zeros([10, 2, 2, 3], tf.uint8), "sex": tf.zeros([10], tf.float32)})
    ds = reader._gather_batches(elements, declared, 2, 0, lambda b: (b["image"], b["sex"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"counted {declared} records"):
        for _ in ds:
            pass


MIRRORED = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])
    from pipeline import reader
    from test_reader import decode_index
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cfg = reader.ReadConfig(image_size=32, batch_size=8, seed=0)
    dist = reader.distributed_dataset(strategy, sys.argv[1], "train", True, cfg)
    per_replica, seen = [], []
    for images, labels in dist:
        locals_ = strategy.experimental_local_results(images)
        per_replica.append([int(t.shape[0]) for t in locals_])
        devices = [t.device for t in locals_]
        for t in locals_:
            seen.extend(decode_index(t.numpy()).tolist())
    @tf.function
    def step(images, labels):
        return strategy.run(lambda x, y: tf.shape(x)[0] + 0 * tf.size(y),
                            args=(images, labels))
    out = step(*next(iter(dist)))
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "per_replica": per_replica,
                      "seen": seen, "devices": devices,
                      "step": [int(v) for v in strategy.experimental_local_results(out)]}))
""")


def test_mirrored_strategy_feeds_both_replicas(coded, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(here), here, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), coded, here], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["per_replica"] and all(p == [4, 4] for p in result["per_replica"])
    assert len({d.lower() for d in result["devices"]}) == 2
    seen = result["seen"]
    assert len(seen) == len(set(seen)) == len(_normal_ids()) // 8 * 8
    assert result["step"] == [4, 4]
