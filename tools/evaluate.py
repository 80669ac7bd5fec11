"""fundus-evaluate: honest numbers for a model or an ensemble on a converted split.

    fundus-evaluate --data=DATA --model=RUN_DIR --output=EVAL_DIR [--split=test]
                    [--tta=flip] [--bootstrap=2000] [--seed=0] [--batch_size=32]

``--split=oof`` evaluates a ``fundus-train --cv`` dir on its own validation folds (each
fold model on the fold it never trained on): the pooled out-of-fold AUC with its
patient-bootstrap interval, and the per-fold AUCs with their mean ± sd.

``--model`` is a model dir (``best.keras`` + ``run.json``), a ``.keras`` file, an ensemble
dir (``fold_*/`` of ``fundus-train --cv``, or a dir of model dirs), or a comma list of
these (one ensemble: probabilities averaged). Writes ``metrics.json``, ``predictions.csv``,
``roc.png``, ``reliability.png`` and ``tensorboard/`` under ``--output``
(see :mod:`model.evaluation`).

Exit status: 0 evaluated; 2 bad flags or inputs (a --model that cannot be loaded, no
manifest in --data, an empty --split; the message names the flag and the fix); 1 a
failure during the evaluation.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs before TF is imported)

from absl import app, flags, logging

from model import evaluation
from model import io as model_io
from pipeline import manifest as manifest_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Converted data dir (fundus-convert output).")
flags.DEFINE_string("split", "test", "Split to evaluate: train, val or test; or oof (the "
                    "fold models of a fundus-train --cv dir, each on its own validation "
                    "fold: the CV's pooled out-of-fold AUC with a patient-bootstrap CI).")
flags.DEFINE_list("model", None, "Model dir(s), .keras file(s) or an ensemble dir; a comma "
                  "list forms one ensemble (mean probability).")
flags.DEFINE_string("output", None, "Output dir for metrics.json, predictions.csv, plots, "
                    "tensorboard/.")
flags.DEFINE_enum("tta", "auto", ["auto", "none", "flip"], "Test-time augmentation: flip "
                  "averages the image and its left-right mirror; auto: flip when every "
                  "model was trained with fundus-train --tta=flip (its run.json), else none.")
flags.DEFINE_integer("batch_size", 32, "Images per prediction batch.", lower_bound=1)
flags.DEFINE_integer("bootstrap", 2000, "Patient-bootstrap resamples for the 95% CIs "
                     "(0: no interval).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
flags.DEFINE_bool("progress", True, "Progress lines on stderr (--noprogress: none).")
flags.mark_flags_as_required(["data", "model", "output"])


def _summary(m: dict) -> str:
    def one(level: str) -> str:
        d = m[level]
        lo, hi = d["auc_ci95"]
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
        auc = f"{d['auc']:.3f}" if d["auc"] is not None else "undefined"
        return (f"{level:7s} n={d['n']:5d}  AUC {auc}{ci}  "
                f"acc@0.5 {d['at_0_5']['accuracy']:.3f}  "
                f"bal.acc@Youden({d['at_youden']['threshold']:.3f}) "
                f"{d['at_youden']['balanced_accuracy']:.3f}")
    cv = m.get("cv")
    folds = [] if not cv else [
        f"folds   AUC per image {cv['image_auc']['mean']:.3f} ± {cv['image_auc']['sd']:.3f}, "
        f"per patient {cv['patient_auc']['mean']:.3f} ± {cv['patient_auc']['sd']:.3f} "
        f"(mean ± sd over {len(cv['folds'])} folds)"]
    return "\n".join([one("image"), one("patient"), *folds,
                      f"majority-class accuracy {m['majority_accuracy']:.3f}; "
                      f"threshold from {m['threshold']['source']}"
                      + (f" ({m['threshold']['note']})" if m["threshold"]["note"] else "")])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    with _common.checking_inputs():
        members = model_io.load_models(FLAGS.model)
        man = manifest_lib.load(FLAGS.data)
        if FLAGS.split != evaluation.OOF and manifest_lib.split_size(man, FLAGS.split) == 0:
            raise ValueError(f"--split={FLAGS.split}: {FLAGS.data} has no records in split "
                             f"{FLAGS.split!r} (splits: {sorted(man['splits'])}, or "
                             f"{evaluation.OOF})")
    metrics = evaluation.evaluate(None, FLAGS.data, FLAGS.split, FLAGS.output, tta=FLAGS.tta,
                                  batch_size=FLAGS.batch_size, bootstrap=FLAGS.bootstrap,
                                  seed=FLAGS.seed, members=members,
                                  progress=FLAGS.progress)
    logging.info("wrote %s", FLAGS.output)
    print(_summary(metrics))
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
