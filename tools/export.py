"""fundus-export: SavedModel + TFLite copies of a model, each checked against Keras.

    fundus-export --model=RUN_DIR --output=EXPORT_DIR --data=DATA [--tflite=float32,float16,int8]

Check images come from ``--data``'s ``--check_split`` (default test; random pixels when no
``--data``, said so in export.json); the int8 representative set from its train split.
Writes ``saved_model/``, ``model_<kind>.tflite`` and ``export.json`` (see
:mod:`model.export`).

Exit status: 0 exported and checked; 2 bad flags or inputs (a --model that cannot be
loaded, an unknown --tflite kind, int8 without --data, an unreadable --data split; the
message names the flag and the fix); 1 when SavedModel or TFLite float32 differ from
Keras by more than 1e-4, or an export failed.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs before TF is imported)

import numpy as np
from absl import app, flags, logging

from model import export as export_lib
from model import io as model_io

FLAGS = flags.FLAGS
flags.DEFINE_list("model", None, "Model dir, .keras file, or ensemble dir / comma list "
                  "(exported as one averaging model; members must share the input size).")
flags.DEFINE_string("output", None, "Output dir.")
flags.DEFINE_list("tflite", ["float32", "float16"], "TFLite variants: float32, float16, int8.")
flags.DEFINE_string("data", None, "Converted data dir: check images and int8 calibration.")
flags.DEFINE_string("check_split", "test", "Split the check images come from.")
flags.DEFINE_integer("check_images", 8, "Number of check images.", lower_bound=1)
flags.DEFINE_integer("representative", 64, "int8 calibration images from the train split.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the random check images (without --data).")
flags.DEFINE_bool("progress", True, "Progress lines on stderr (--noprogress: none).")
flags.mark_flags_as_required(["model", "output"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    with _common.checking_inputs():
        unknown = [k for k in FLAGS.tflite if k not in export_lib.TFLITE_KINDS]
        if unknown:
            raise ValueError(f"--tflite: unknown kind(s) {', '.join(unknown)}; use "
                             f"{', '.join(export_lib.TFLITE_KINDS)}")
        if "int8" in FLAGS.tflite and not FLAGS.data:
            raise ValueError("--tflite=int8 needs a representative set from the train "
                             "split: pass --data")
        members = model_io.load_models(FLAGS.model)
        sizes = model_io.image_sizes(members)
        if len(sizes) > 1:
            raise ValueError(f"--model: an exported ensemble needs one input size, members "
                             f"have {sizes}; export members separately")
        size = sizes[0]
        representative = None
        if FLAGS.data:
            images = export_lib.split_images(FLAGS.data, FLAGS.check_split, size,
                                             FLAGS.check_images)
            source = f"{FLAGS.data} split {FLAGS.check_split}"
            if "int8" in FLAGS.tflite:
                rep = export_lib.split_images(FLAGS.data, "train", size, FLAGS.representative)
                representative = export_lib.representative_from(rep)
        else:
            rng = np.random.default_rng(FLAGS.seed)
            images = rng.integers(0, 256, (FLAGS.check_images, size, size, 3), dtype=np.uint8)
            source = "random pixels (no --data)"
            logging.warning("no --data: checking the exports on random pixels")
    report = export_lib.export(members, FLAGS.output, images, tflite=FLAGS.tflite,
                               check_source=source, representative=representative,
                               progress=FLAGS.progress)
    print(f"saved_model: max |diff| {report['saved_model']['max_abs_diff']:.2e}")
    for kind, e in report["tflite"].items():
        print(f"tflite {kind:8s} {e['bytes'] / 1e6:8.2f} MB  max |diff| {e['max_abs_diff']:.2e}"
              + ("" if e.get("ok", True) else "  FAILED (> 1e-4)"))
    if not report["ok"]:
        raise _common.RunError(f"an export disagrees with Keras beyond 1e-4; see "
                               f"{FLAGS.output}/export.json")
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
