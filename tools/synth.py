"""fundus-synth: write a synthetic ODIR-5K-shaped data set (images + every annotation format).

    fundus-synth --output=/tmp/synth --patients=200 --signal=1.0 --seed=0

What is written, the planted sex signal and the determinism are described in
:mod:`pipeline.synthetic` (library use: ``pipeline.synthetic.make_synthetic``).

Exit status: 0 written; 2 bad flags or a non-empty ``--output`` without ``--overwrite``
(the message names the flag and the fix); 1 a failure while writing.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

import os

from absl import app, flags

from pipeline import selection
from pipeline import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Output folder (empty or absent).")
flags.DEFINE_integer("patients", 100, "Number of patients (two eyes each).", lower_bound=1)
flags.DEFINE_float("signal", 1.0, "Planted sex-signal strength (0 none, 1 strong).",
                   lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "Random seed; same flags give byte-identical files.")
flags.DEFINE_integer("min_width", 1400, "Smallest image width, pixels.", lower_bound=32)
flags.DEFINE_integer("max_width", 3000, "Largest image width, pixels.", lower_bound=32)
flags.DEFINE_list("formats", list(synthetic.FORMATS),
                  f"Annotation formats: {', '.join(synthetic.FORMATS)}.")
flags.DEFINE_float("normal_fraction", 0.6, "Share of eyes exactly 'normal fundus', 0..1.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Rendering processes.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Replace a previous synthetic data set.")
flags.mark_flag_as_required("output")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    size_range = (FLAGS.min_width, FLAGS.max_width)
    with _common.checking_inputs():
        synthetic.check_arguments(FLAGS.output, FLAGS.patients, FLAGS.formats, FLAGS.signal,
                                  size_range, FLAGS.normal_fraction, FLAGS.overwrite)
    out = synthetic.make_synthetic(FLAGS.output, n_patients=FLAGS.patients,
                                   formats=FLAGS.formats, signal=FLAGS.signal,
                                   seed=FLAGS.seed, size_range=size_range,
                                   normal_fraction=FLAGS.normal_fraction,
                                   workers=FLAGS.workers, overwrite=FLAGS.overwrite)
    n_normal = sum(selection.is_normal(p[f"{e}_kw"]) for p in out["patients"]
                   for e in ("left", "right"))
    print(f"wrote {2 * FLAGS.patients} images ({n_normal} normal eyes) of {FLAGS.patients} "
          f"patients to {FLAGS.output}")
    for fmt in synthetic.FORMATS:
        if fmt in out:
            print(f"  {fmt}: {out[fmt]}")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
