"""fundus-bench's library (model.bench, pipeline.bench) on tiny data: every figure and
ratio lands in the JSON."""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest

from model import bench
from pipeline import bench as input_bench

MIN_SECONDS = 0.3     # each cached / tensor-bound timing (the job's default is 2 s)


@pytest.fixture(scope="module")
def originals(tiny_data, tmp_path_factory) -> str:
    """The tiny set's stored JPEGs written out as 'original' files."""
    out = tmp_path_factory.mktemp("originals")
    for rec in input_bench.stored_records(tiny_data, "train"):
        (out / rec["filename"]).write_bytes(rec["jpeg"])
    return str(out)


def test_bench_writes_every_figure(tiny_data, originals, tmp_path):
    output = str(tmp_path / "bench.json")
    bench.run_bench(tiny_data, output, image_size=32, batch_size=8, epochs=3,
                    cold_repeats=2, synthetic_images=16, size_range=(120, 160), train_steps=1,
                    warmup_steps=1, train_arch="tiny", augment="on", originals=originals,
                    workdir=str(tmp_path), min_seconds=MIN_SECONDS)
    with open(output, encoding="utf-8") as f:
        res = json.load(f)
    assert set(bench.RATIOS) <= set(res["ratios"])
    for name in ("data", "camera"):
        fig = res[name]
        for key in ("baseline_first_epoch", "baseline_cached_epoch", "pipeline_cold",
                    "pipeline_cached", "decode_bound", "tensor_bound"):
            assert fig[key] > 0 and math.isfinite(fig[key]), (name, key)
    assert res["data"]["images"] == 48 and res["data"]["pipeline_images_per_epoch"] == 48
    for name in ("data", "camera"):       # medians over repeats, each repeat recorded
        fig = res[name]
        assert len(fig["pipeline_cold_epochs"]) == 2
        assert len(fig["pipeline_cached_epochs"]) == len(fig["tensor_bound_passes"]) == 2
        assert min(fig["pipeline_cold_epochs"]) <= fig["pipeline_cold"] <= \
            max(fig["pipeline_cold_epochs"])
    assert res["camera"]["images"] == 16
    assert res["camera"]["original_bytes"] > res["camera"]["stored_bytes"] > 0
    assert res["train"]["train_fed"] > 0 and res["train"]["train_constant"] > 0
    assert len(res["train"]["train_fed_rounds"]) == 2     # alternating rounds, median kept
    for key in bench.RATIOS:
        assert res["ratios"][key] > 0
    assert res["config"]["augment_in_epochs"] is True
    assert not [p for p in os.listdir(tmp_path) if p.startswith("fundus_bench_")]
    # cached and tensor-bound figures: each timing covers >= min_seconds, spread recorded
    assert res["config"]["min_seconds"] == MIN_SECONDS
    for name in ("data", "camera"):
        fig = res[name]
        for key in ("baseline_cached_epoch", "pipeline_cached", "tensor_bound"):
            timings, sp = fig[f"{key}_timings"], fig[f"{key}_spread"]
            assert len(timings) == 2, (name, key)
            for t in timings:
                assert t["seconds"] >= MIN_SECONDS and t["passes"] >= 1, (name, key, t)
                assert t["images"] >= t["passes"] * 8 and t["rate"] > 0
            assert set(sp) == {"n", "min", "median", "max", "rel_iqr"} and sp["n"] == 2
            assert sp["min"] <= fig[key] == sp["median"] <= sp["max"] and sp["rel_iqr"] >= 0
        assert fig["pipeline_cached_epochs"] == [t["rate"] for t in
                                                 fig["pipeline_cached_timings"]]
        assert len(fig["cached_vs_tensor_bound_rounds"]) == 2
    for key in ("cached_vs_tensor_bound", "camera_cached_vs_tensor_bound"):
        sp = res["ratio_spreads"][key]
        assert sp["n"] == 2 and sp["min"] <= sp["median"] <= sp["max"]
        assert res["ratios"][key] == sp["median"]       # the median of the paired rounds
    text = bench.report(res)
    assert "rel IQR" in text and "2 timings x >= 0.3 s" in text


def test_timing_repeats_passes_until_min_seconds():
    calls = []

    def make_pass(p):
        calls.append(p)
        return [np.zeros((4, 2, 2, 3), np.uint8)] * 3

    def consume(images):
        time.sleep(0.01)
        return 1.0

    t = input_bench.timing(make_pass, consume, 0.1)
    assert t["seconds"] >= 0.1 and t["passes"] == len(calls) >= 3
    assert calls == list(range(t["passes"])) and t["images"] == 12 * t["passes"]
    assert input_bench.timing(make_pass, consume, 0.0)["passes"] == 1
    sp = input_bench.spread([4.0, 1.0, 2.0, 3.0])
    assert (sp["min"], sp["median"], sp["max"], sp["n"]) == (1.0, 2.5, 4.0, 4)
    assert sp["rel_iqr"] == pytest.approx((3.25 - 1.75) / 2.5)
    assert input_bench.spread([5.0])["rel_iqr"] == 0.0


def test_missing_originals_named(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="--originals: 48 original JPEGs"):
        input_bench.original_paths(tiny_data, [r["filename"] for r in
                                               input_bench.stored_records(tiny_data, "train")],
                                   str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--originals"):
        input_bench.check_inputs(tiny_data, "train", str(tmp_path))


def test_bad_arguments_named():
    with pytest.raises(ValueError, match="--epochs=1"):
        bench.check_arguments(epochs=1, size_range=(1400, 3000), train_arch="tiny",
                              weights="none", precision="auto", augment_mode="auto")
    with pytest.raises(FileNotFoundError, match="--weights=/no/such.h5"):
        bench.check_arguments(epochs=3, size_range=(1400, 3000), train_arch="tiny",
                              weights="/no/such.h5", precision="auto", augment_mode="auto")
