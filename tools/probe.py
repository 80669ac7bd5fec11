"""fundus-probe: frozen multi-depth features + L2 logistic regression, repeated patient CV.

    fundus-probe --data=DATA --backbones=mobilenet_v2@512 \\
        --weights=mobilenet_v2=../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5 \\
        --feature_layers=multi --fold_seeds=0,1,2 --cache_dir=/tmp/probe_cache \\
        --output=RUNS/probe_mnv2_512

Several ``--backbones`` concatenate their features (each computed once and cached in
``--cache_dir``). ``--ensemble=OUT1,OUT2,...`` instead averages earlier probes'
out-of-fold probabilities (their ``oof.csv``: the same eyes and fold seeds) and scores
the average the same way: an ensemble of probes, each eye scored only by models that never
saw its patient. Reads the normal eyes of the train and val splits only (never test).
Writes ``probe.json`` (per-fold AUCs, mean ± sd, pooled out-of-fold AUCs with patient-
bootstrap intervals, wall times) and ``oof.csv`` (out-of-fold probabilities per eye and
fold seed) into ``--output``; prints one summary line. See :mod:`model.probe`.

Exit status: 0 done; 2 bad flags or inputs (an unknown backbone or layer, a size below the
backbone's minimum, a missing weights file, a --data without train/val records; the
message names the flag); 1 a failure while computing.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

import os
import time

import numpy as np
import pandas as pd
from absl import app, flags

from model import probe as probe_lib
from pipeline import fileio

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Converted data dir (fundus-convert output).")
flags.DEFINE_list("backbones", ["mobilenet_v2@512"], "NAME@SIZE list; several are "
                  "concatenated (e.g. mobilenet_v2@512,efficientnet_lite2@512).")
flags.DEFINE_list("weights", [], "NAME=imagenet|none|PATH per backbone (default imagenet).")
flags.DEFINE_string("feature_layers", "multi", "Layers pooled per backbone: multi (the "
                    "backbone's preset), last, or a comma list of layer names "
                    "(see model/features.py).")
flags.DEFINE_integer("folds", 5, "Patient-grouped folds per repetition.", lower_bound=2)
flags.DEFINE_list("fold_seeds", ["0", "1", "2"], "One CV repetition per seed.")
flags.DEFINE_float("c", 1e-3, "Inverse L2 strength of the logistic regression (scikit-learn "
                   "convention, on standardised features; smaller = stronger).")
flags.DEFINE_enum("orient", "eye", ["eye", "disc_left", "none"], "eye: mirror the recorded "
                  "right eyes to look like left eyes; disc_left: mirror by the model's own "
                  "disc finder (fundus-train --orient=disc_left); none.")
flags.DEFINE_string("cache_dir", None, "Keep computed features here (.npz per backbone spec).")
flags.DEFINE_string("output", None, "Output dir for probe.json and oof.csv.")
flags.DEFINE_list("ensemble", [], "Earlier probe --output dirs whose out-of-fold "
                  "probabilities are averaged and scored (no features computed).")
flags.DEFINE_bool("progress", True, "Progress lines on stderr (--noprogress: none).")
flags.mark_flags_as_required(["output"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    t0 = time.time()
    if FLAGS.ensemble:
        return _ensemble(t0)
    with _common.checking_inputs():
        if not FLAGS.data:
            raise ValueError("--data is required (or --ensemble=DIR,... of earlier probes)")
        if FLAGS.c <= 0:
            raise ValueError(f"--c={FLAGS.c}: must be > 0")
        try:
            seeds = [int(s) for s in FLAGS.fold_seeds]
        except ValueError:
            raise ValueError(f"--fold_seeds={','.join(FLAGS.fold_seeds)}: integers") from None
        if not seeds:
            raise ValueError("--fold_seeds: give at least one seed, e.g. 0,1,2")
        weights = {}
        for item in FLAGS.weights:
            name, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"--weights={item}: expected NAME=imagenet|none|PATH")
            weights[name] = value
        specs = probe_lib.parse_specs(FLAGS.backbones, weights, FLAGS.feature_layers)
        probe_lib.check_data(FLAGS.data, FLAGS.folds)
    sets, timing = [], {}
    for spec in specs:
        with _common.checking_inputs():     # bad weights / layers surface at build time
            fs = probe_lib.extract(spec, FLAGS.data, orient=FLAGS.orient,
                                   cache_dir=FLAGS.cache_dir, show_progress=FLAGS.progress)
        timing[spec.label] = fs.seconds
        sets.append(fs)
    fs = probe_lib.combine(sets)
    result = probe_lib.repeated_cv(fs, k=FLAGS.folds, seeds=seeds, c=FLAGS.c)
    preds = result.pop("oof_predictions")
    result.update(backbones=[s.label for s in specs],
                  feature_layers={s.label: list(s.layers) for s in specs},
                  orient=FLAGS.orient, data=os.path.abspath(FLAGS.data),
                  extract_seconds=timing, wall_seconds=round(time.time() - t0, 1))
    os.makedirs(FLAGS.output, exist_ok=True)
    fileio.write_json(os.path.join(FLAGS.output, "probe.json"), result)
    frame = pd.DataFrame({"file": fs.filename, "patient": fs.patient, "eye": fs.eye,
                          "label": fs.y, **{f"p_seed{s}": p for s, p in preds.items()}})
    fileio.write_text(os.path.join(FLAGS.output, "oof.csv"), frame.to_csv(index=False))
    print(f"fundus-probe {'+'.join(result['backbones'])}: {probe_lib.format_result(result)}; "
          f"{result['wall_seconds']:.0f} s", flush=True)
    return 0


def _ensemble(t0: float) -> int:
    """``--ensemble``: the mean of earlier probes' out-of-fold probabilities, scored."""
    with _common.checking_inputs():
        real = [os.path.realpath(d) for d in FLAGS.ensemble]
        if len(set(real)) != len(real):
            raise ValueError(f"--ensemble: a probe is given twice ({','.join(FLAGS.ensemble)})")
        frames = []
        for d in FLAGS.ensemble:
            path = os.path.join(d, "oof.csv")
            if not os.path.exists(path):
                raise ValueError(f"--ensemble: {path} does not exist (a fundus-probe "
                                 f"--output dir holds it)")
            frames.append(pd.read_csv(path, dtype={"patient": str, "file": str,
                                                   "eye": str}))
        frame, seeds = probe_lib.average_oof(frames)
        ks = {fileio.read_json(os.path.join(d, "probe.json"), {}).get("k") for d in
              FLAGS.ensemble}
        if len(ks) != 1 or None in ks:
            raise ValueError(f"--ensemble: the probes used different --folds ({ks})")
    y = frame["label"].to_numpy(np.float64)
    patient = frame["patient"].astype(str).to_numpy()
    result = probe_lib.scores(y, patient, {s: frame[f"p_seed{s}"].to_numpy() for s in seeds},
                              ks.pop())
    result.update(members=[os.path.abspath(d) for d in FLAGS.ensemble],
                  wall_seconds=round(time.time() - t0, 1))
    os.makedirs(FLAGS.output, exist_ok=True)
    fileio.write_json(os.path.join(FLAGS.output, "probe.json"), result)
    fileio.write_text(os.path.join(FLAGS.output, "oof.csv"), frame.to_csv(index=False))
    print(f"fundus-probe ensemble of {len(frames)}: {probe_lib.format_result(result)}",
          flush=True)
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
