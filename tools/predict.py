"""fundus-predict: probability that the patient is male, for new fundus photos.

    fundus-predict --model=RUN_DIR --output=predictions.csv photo.jpg folder/ 'more/*.png'
    fundus-predict --model=CV_DIR --inputs=folder/ --tta=flip --output=out.csv

Inputs are files, folders (searched recursively for JPEG/PNG/TIFF/BMP/WebP) or globs,
as positional arguments and/or ``--inputs``; photos of any size. Each photo goes through
the converter's fundus crop (:mod:`pipeline.fundus`) at the training data's stored size
and JPEG quality, then the reader's decode and resize (see :mod:`model.prediction`).
``--model`` takes a model dir, a ``.keras`` file, an ensemble dir or a comma list (the
probabilities are averaged). The CSV has ``file, probability_male, predicted_sex, error``;
an input that cannot be read or holds no fundus gets its error and the rest go on.

Exit status: 0 predicted (rows with errors included); 2 bad flags or inputs (no inputs,
a --model that cannot be loaded, a bad --threshold; the message names the flag and the
fix); 1 a failure during prediction.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs before TF is imported)

import pandas as pd
from absl import app, flags, logging

from model import io as model_io
from model import prediction

FLAGS = flags.FLAGS
flags.DEFINE_list("model", None, "Model dir(s), .keras file(s) or an ensemble dir.")
flags.DEFINE_list("inputs", [], "Photos: files, folders or globs (also positional args).")
flags.DEFINE_string("output", "predictions.csv", "CSV to write.")
flags.DEFINE_enum("tta", "auto", ["auto", "none", "flip"], "Test-time augmentation: flip "
                  "averages the image and its left-right mirror; auto: flip when every "
                  "model was trained with fundus-train --tta=flip (its run.json), else none.")
flags.DEFINE_integer("batch_size", 32, "Images per prediction batch.", lower_bound=1)
flags.DEFINE_string("threshold", "0.5", "Probability at or above which predicted_sex is "
                    "male: a number in [0, 1], or 'youden' for the threshold in run.json.")
flags.DEFINE_string("data", None, "Optional: the training data dir, whose manifest gives the "
                    "stored size and JPEG quality when run.json does not.")
flags.DEFINE_integer("stored_size", None, "Override: the converter's --image_size of the "
                     "training data (default: run.json / manifest, else 512).", lower_bound=32)
flags.DEFINE_integer("jpeg_quality", None, "Override: the converter's --jpeg_quality "
                     "(default: run.json / manifest, else 95).", lower_bound=1, upper_bound=100)
flags.DEFINE_integer("workers", 2, "Threads preparing photos.", lower_bound=1)
flags.DEFINE_bool("progress", True, "Progress lines on stderr (--noprogress: none).")
flags.mark_flags_as_required(["model"])


def main(argv: list[str]) -> int:
    inputs = list(argv[1:]) + list(FLAGS.inputs)
    if not inputs:
        raise app.UsageError("no inputs: give photos, folders or globs (or --inputs)")
    with _common.checking_inputs():
        members = model_io.load_models(FLAGS.model)
        fmt = prediction.stored_format(members, FLAGS.data, FLAGS.stored_size,
                                       FLAGS.jpeg_quality)
        if FLAGS.threshold.strip().lower() == "youden":
            threshold = prediction.model_threshold(members)
        else:
            try:
                threshold = float(FLAGS.threshold)
            except ValueError:
                raise ValueError(f"--threshold={FLAGS.threshold!r}: a number in [0, 1] "
                                 "or 'youden'") from None
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"--threshold={threshold}: must be in [0, 1]")
        tta = model_io.resolve_tta(FLAGS.tta, members)
        files, problems = prediction.expand_inputs(inputs)
    logging.info("%d photos; %d models; stored format %d px q%d from %s", len(files),
                 len(members), fmt.image_size, fmt.jpeg_quality, fmt.source)
    frame = prediction.predict_files(members, files, fmt, batch_size=FLAGS.batch_size,
                                     tta=tta, threshold=threshold, workers=FLAGS.workers,
                                     progress=FLAGS.progress)
    if problems:
        extra = pd.DataFrame([{"file": i, "probability_male": float("nan"),
                               "predicted_sex": "", "error": err} for i, err in problems],
                             columns=prediction.CSV_COLUMNS)
        frame = pd.concat([frame, extra], ignore_index=True)
    prediction.write_csv(FLAGS.output, frame)
    bad = frame[frame["error"] != ""]
    for _, r in bad.iterrows():
        logging.warning("skipped %s: %s", r["file"], r["error"])
    print(f"{len(frame) - len(bad)} photos predicted, {len(bad)} with errors -> {FLAGS.output}")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
