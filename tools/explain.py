"""fundus-explain: Grad-CAM overlays showing where the model looks.

    fundus-explain --model=RUN_DIR --data=DATA --output=DIR [--split=test] [--n=8]
    fundus-explain --model=RUN_DIR --data=DATA --output=DIR --files=123_left.jpg,456_right.jpg
    fundus-explain --model=RUN_DIR --output=DIR --files=/photos/a.jpg,/photos/b.png

Without ``--files``: the ``--n`` most confident images of the split (half most male,
half most female). ``--files`` names records of the split (their file names) or photo
files on disk (prepared like fundus-predict). Writes ``gradcam_grid.png`` (photo + overlay
pairs), ``overlays/*.png``, ``explain.json`` and ``tensorboard/`` (see :mod:`model.explain`).
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs before TF is imported)

from absl import flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_list("model", None, "Model dir, .keras file, ensemble dir or comma list.")
flags.DEFINE_string("data", None, "Converted data dir (for --split images).")
flags.DEFINE_string("split", "test", "Split whose images are explained.")
flags.DEFINE_integer("n", 8, "How many of the most confident images.", lower_bound=1)
flags.DEFINE_list("files", [], "Record file names of the split, or photo paths.")
flags.DEFINE_string("output", None, "Output dir.")
flags.DEFINE_integer("batch_size", 32, "Images per prediction batch.", lower_bound=1)
flags.mark_flags_as_required(["model", "output"])


def main(argv: list[str]) -> int:
    del argv
    from model import explain as explain_lib  # noqa: PLC0415
    from model import io as model_io  # noqa: PLC0415

    try:
        members = model_io.load_models(FLAGS.model)
        report = explain_lib.explain(members, FLAGS.output, data_dir=FLAGS.data,
                                     split=FLAGS.split, n=FLAGS.n, files=FLAGS.files,
                                     batch_size=FLAGS.batch_size)
    except (ValueError, FileNotFoundError, KeyError) as e:
        logging.error("fundus-explain: %s", e)
        return 1
    for p in report["problems"]:
        logging.warning("skipped %s: %s", p["file"], p["error"])
    print(f"{len(report['images'])} images explained -> {FLAGS.output}/gradcam_grid.png")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
