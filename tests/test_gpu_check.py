"""``fundus-gpu-check``: its CPU smoke run passes every check and writes every figure; on a
machine without a GPU, without ``--cpu_smoke``, it refuses (exit 2) before writing.

Both run the job as a subprocess with ``CUDA_VISIBLE_DEVICES=""`` (no GPU even on a GPU
host): the smoke run splits the CPU into two logical devices before TensorFlow starts,
which needs a fresh process.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.gpu_check", *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=900)


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_cpu_smoke_passes_every_check_and_writes_the_json(tmp_path):
    out = tmp_path / "smoke.json"
    proc = _run("--cpu_smoke", f"--output={out}", f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all passed" in proc.stdout
    res = json.loads(out.read_text())
    assert res["mode"] == "cpu_smoke" and res["passed"] is True
    assert set(res["checks"]) == {"mixed_float16", "mirrored", "speed"}
    assert all(c["passed"] and "error" not in c for c in res["checks"].values())
    assert res["devices"]["gpus"] == [] and res["devices"]["cpu_cores"] >= 1
    assert {"tensorflow", "keras", "python", "cuda_version"} <= set(res["versions"])

    mixed = res["checks"]["mixed_float16"]
    assert mixed["policy"] == "mixed_float16"
    assert mixed["optimizer"] == "LossScaleOptimizer" and mixed["inner_optimizer"] == "Adam"
    assert (mixed["sex_compute_dtype"], mixed["sex_output_dtype"],
            mixed["conv_compute_dtype"]) == ("float32", "float32", "float16")
    assert len(mixed["loss"]) == 3 and all(math.isfinite(v) for v in mixed["loss"])
    assert _positive(mixed["loss_scale"])

    mirrored = res["checks"]["mirrored"]
    assert mirrored["replicas"] == mirrored["expected_replicas"] == 2
    assert mirrored["strategy"]["name"] == "MirroredStrategy"
    assert len(mirrored["devices"]) == 2
    assert len(mirrored["loss"]) == 3 and all(math.isfinite(v) for v in mirrored["loss"])

    speed = res["checks"]["speed"]
    assert set(speed["models"]) == {"tiny@32", "tiny@48"}
    for m in speed["models"].values():
        assert _positive(m["train_fed"]) and _positive(m["train_constant"])
        assert _positive(m["train_fed_vs_constant"])
    for key in ("pipeline_cold", "pipeline_cached", "decode_bound", "tensor_bound"):
        assert _positive(float(speed["input"][key])), key
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("fundus_gpu_check_")]


def test_without_gpu_and_without_cpu_smoke_exits_2(tmp_path):
    out = tmp_path / "check.json"
    proc = _run(f"--output={out}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--cpu_smoke" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
