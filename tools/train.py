"""fundus-train: transfer learning of sex from fundus photos, one run, one fold or a CV.

    fundus-train --data=DATA --model_dir=RUNS/mnv2 --backbone=mobilenet_v2 \\
        --weights=../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5 \\
        --image_size=224 --epochs=12 --warmup_epochs=2

    fundus-train --data=DATA5 --model_dir=RUNS/cv --cv=5        # every fold, cv.json

Killed and restarted with the same flags, it resumes from the last finished epoch. The
model dir holds best.keras, saved_model/, history.csv/json, run.json and logs/
(``tensorboard --logdir RUNS``). See :mod:`model.training`; the flags are
:mod:`model.train_config`'s.

Exit status: 0 trained; 2 bad flags or inputs (the message names the flag and the fix);
1 a failure during training.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

from absl import app, flags

from model import augment, train_config, training

FLAGS = flags.FLAGS
train_config.define_flags(FLAGS)
flags.adopt_module_key_flags(train_config)   # --helpshort lists the training flags
flags.adopt_module_key_flags(augment)
flags.mark_flags_as_required(["data", "model_dir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    with _common.checking_inputs():       # an --augment_* value out of range, a bad flag
        cfg = train_config.config_from_flags(FLAGS)
        cfg.validate()
    # ConfigError (the --cv checks, the data vs the flags) is bad input: exit 2
    if FLAGS.cv:
        summary = training.train_cv(cfg, FLAGS.cv)
        print(training.format_cv(summary), flush=True)
    else:
        training.train(cfg)
    return 0


run = _common.entry(main, input_errors=(train_config.ConfigError,))

if __name__ == "__main__":
    run()
