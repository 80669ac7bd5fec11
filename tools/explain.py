"""fundus-explain: Grad-CAM overlays showing where the model looks.

    fundus-explain --model=RUN_DIR --data=DATA --output=DIR [--split=test] [--n=8]
    fundus-explain --model=RUN_DIR --data=DATA --output=DIR --files=123_left.jpg,456_right.jpg
    fundus-explain --model=RUN_DIR --output=DIR --files=/photos/a.jpg,/photos/b.png

Without ``--files``: the ``--n`` most confident images of the split (half most male,
half most female). ``--files`` names records of the split (their file names) or photo
files on disk (prepared like fundus-predict). Writes ``gradcam_grid.png`` (photo + overlay
pairs), ``overlays/*.png``, ``explain.json`` and ``tensorboard/`` (see :mod:`model.explain`).

Exit status: 0 explained; 2 bad flags or inputs (a --model that cannot be loaded, a split
without --data, no manifest or an empty --split; the message names the flag and the fix);
1 a failure during the run (e.g. none of --files could be explained).
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs before TF is imported)

import os

from absl import app, flags, logging

from model import explain as explain_lib
from model import io as model_io
from pipeline import manifest as manifest_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("model", None, "Model dir, .keras file, ensemble dir or comma list.")
flags.DEFINE_string("data", None, "Converted data dir (for --split images).")
flags.DEFINE_string("split", "test", "Split whose images are explained.")
flags.DEFINE_integer("n", 8, "How many of the most confident images.", lower_bound=1)
flags.DEFINE_list("files", [], "Record file names of the split, or photo paths.")
flags.DEFINE_string("output", None, "Output dir.")
flags.DEFINE_integer("batch_size", 32, "Images per prediction batch.", lower_bound=1)
flags.DEFINE_bool("progress", True, "Progress lines on stderr (--noprogress: none).")
flags.mark_flags_as_required(["model", "output"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    with _common.checking_inputs():
        members = model_io.load_models(FLAGS.model)
        names = [f for f in FLAGS.files if not os.path.isfile(f)]
        if names or not FLAGS.files:        # images of a split: --data must hold it
            if not FLAGS.data:
                raise ValueError("--data is needed to explain images of a split"
                                 + (f" (not files on disk: {', '.join(names)})"
                                    if names else ""))
            man = manifest_lib.load(FLAGS.data)
            if manifest_lib.split_size(man, FLAGS.split) == 0:
                raise ValueError(f"--split={FLAGS.split}: {FLAGS.data} has no records in "
                                 f"split {FLAGS.split!r} (splits: {sorted(man['splits'])})")
    report = explain_lib.explain(members, FLAGS.output, data_dir=FLAGS.data,
                                 split=FLAGS.split, n=FLAGS.n, files=FLAGS.files,
                                 batch_size=FLAGS.batch_size, progress=FLAGS.progress)
    for p in report["problems"]:
        logging.warning("skipped %s: %s", p["file"], p["error"])
    print(f"{len(report['images'])} images explained -> {FLAGS.output}/gradcam_grid.png")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
