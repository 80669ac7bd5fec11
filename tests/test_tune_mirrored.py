"""fundus-tune trials under ``--strategy=mirrored`` on two logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the sweep runs in a
subprocess script (the pattern of tests/test_training.py ``MIRRORED_SCRIPT``): two logical
CPUs, then :func:`tuning.search.run_sweep` with a base TrainConfig of ``strategy=
"mirrored"`` (the registry's ``tiny`` backbone, random weights, 32 px, batch 8, 1 epoch).
The test checks that every trial really ran on 2 replicas, that both trials completed,
that ``DIR/best`` is a model dir that evaluates (in this process, on one device), and that
resident memory after the trials stays flat.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KT_VARS = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
TRIALS = 3
# tests/test_tune_job.py's memory test allows RSS x1.5 over 4 trials (trial 2 -> 6):
# 0.5 / 4 = 12.5 % of trial 2's RSS per further trial.
GROWTH_PER_TRIAL = 0.125

SWEEP_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from model import distribute, train_config
    from tuning import search, space

    data, directory, trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = train_config.TrainConfig(data=data, model_dir="unused", backbone="tiny",
                                    weights="none", image_size=32, batch_size=8, epochs=1,
                                    warmup_epochs=0, verbose=0, image_grid=0, patience=0,
                                    precision="float32", seed=3, strategy="mirrored")
    sweep_space = space.load(None, ["optimizer=adam|sgd", "learning_rate=1e-3..1e-2:log"])
    sweep = search.SweepConfig(directory=directory, tuner="random", max_trials=trials,
                               seed=1, keep_trials=1)
    result = search.run_sweep(sweep, base, sweep_space, verbose=0)
    strategy = distribute.make_strategy("mirrored")
    print("RESULT " + json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "tuner_replicas": result["tuner"].distribution_strategy.num_replicas_in_sync,
        "rows": len(result["rows"])}))
""")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KT_VARS}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
    return env


def test_mirrored_two_cpu_trials_leave_a_best_model(tiny_data, tmp_path):
    from model import evaluation
    from tuning import search
    directory = str(tmp_path / "sweep")
    script = tmp_path / "sweep_mirrored.py"
    script.write_text(SWEEP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), tiny_data, directory, str(TRIALS)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    assert out["replicas"] == 2 and out["tuner_replicas"] == 2
    assert out["rows"] == TRIALS

    with open(os.path.join(directory, "summary.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == TRIALS and {r["status"] for r in rows} == {"COMPLETED"}

    best = os.path.join(directory, "best")
    for name in ("best.keras", "run.json"):
        assert os.path.exists(os.path.join(best, name)), name
    with open(os.path.join(best, "run.json"), encoding="utf-8") as f:
        run = json.load(f)
    assert run["strategy"] == {"name": "MirroredStrategy", "replicas": 2}
    assert run["tuning"]["trial_id"] == rows[0]["trial_id"]
    metrics = evaluation.evaluate(best, tiny_data, "test", str(tmp_path / "eval"),
                                  bootstrap=50, progress=False)
    assert metrics["n_images"] == 16 and 0.0 <= metrics["image"]["auc"] <= 1.0
    assert os.path.exists(tmp_path / "eval" / "metrics.json")

    # Resident memory after each trial (after clear_session + gc): flat from trial 2 on
    # (trial 1 also holds the datasets and TensorFlow's one-time allocations).
    ends = [e for e in search.read_events(directory) if e["event"] == "end"]
    assert [e["trial_id"] for e in ends] == [str(i) for i in range(TRIALS)]
    rss = [e["rss_mb"] for e in ends]
    print(f"mirrored x2 CPU: RSS MiB after trials 1..{TRIALS}:", rss)
    for before, after in zip(rss[1:], rss[2:]):
        assert after < before * (1.0 + GROWTH_PER_TRIAL), rss
