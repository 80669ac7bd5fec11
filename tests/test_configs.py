"""The shipped recipes parse, and the GPU recipe builds and trains here at a tiny size."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(args, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "tools.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_gpu_recipe_builds_and_trains_one_epoch_with_random_weights(tiny_data, tmp_path):
    out = _train(["--flagfile=configs/odir_gpu.flags", f"--data={tiny_data}",
                  f"--model_dir={tmp_path / 'run'}", "--weights=none", "--image_size=32",
                  "--epochs=1", "--warmup_epochs=1", "--cv=0", "--batch_size=8",
                  "--train_selection=normal", "--image_grid=0"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = json.load(open(tmp_path / "run" / "run.json"))
    assert run["backbone"] == "efficientnet_v2_s" and run["image_size"] == 32
    assert os.path.exists(tmp_path / "run" / "best.keras")


@pytest.mark.parametrize("member", ["odir_cpu", "odir_cpu_lite0", "odir_cpu_lite1",
                                    "odir_cpu_lite2", "odir_gpu_lite2"])
def test_cpu_recipe_flags_are_valid(tiny_data, tmp_path, member):
    """Every flag of each CPU recipe member is known to fundus-train (a typo fails at parse
    time; the members nest configs/odir_cpu.flags); the data here has no folds, so --cv=5
    is refused with a message naming --cv."""
    out = _train([f"--flagfile=configs/{member}.flags", f"--data={tiny_data}",
                  f"--model_dir={tmp_path / 'run'}", "--weights=none"], tmp_path)
    assert out.returncode == 2                     # bad input
    assert "--cv=5" in out.stderr and "Unknown command line flag" not in out.stderr
