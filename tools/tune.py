"""fundus-tune: Keras Tuner sweeps over backbones, optimizers, learning rates, ... .

    fundus-tune --data=DATA --directory=SWEEPS/odir --space=configs/odir_search.json \\
        --tuner=bayesian --max_trials=40 --weights=imagenet

    fundus-tune --data=DATA --directory=SWEEPS/lr --search=learning_rate,optimizer \\
        --range=learning_rate=1e-5..1e-3:log --backbone=efficientnet_v2_s --epochs=8

    fundus-tune --data=DATA --directory=SWEEPS/default --weights=none   # the default space

Every ``fundus-train`` flag is accepted and sets the value of everything that is not
searched (defaults as in ``fundus-train``). ``--space`` (JSON) and ``--range`` give ranges;
``--search`` picks which names are searched (default: every ranged name). A bare value in
the space file fixes a training flag unless that flag is given on the command line.

With none of ``--space``, ``--range``, ``--search`` it searches the default space
(``tuning.space.default_space``): ``backbone`` over the backbones whose weights load here
(``--weights=imagenet``: those with ImageNet weights in the Keras cache, never one that
would download; ``none``: all six; a PATH: ``--backbone`` only), ``optimizer=adamw|adam|sgd``
and ``learning_rate=1e-4..3e-3:log``; a name whose flag is given (``--backbone=resnet50``)
keeps that value. The first line printed says what is searched.

Started again with the same ``--directory`` it resumes (finished trials are not rerun);
``--overwrite`` starts afresh. Distributed: set ``KERASTUNER_TUNER_ID`` / ``_ORACLE_IP`` /
``_ORACLE_PORT`` and run the same command on the chief and on every worker (README).

Results: ``DIR/summary.csv`` (printed too), ``DIR/logs`` (TensorBoard with HParams),
``DIR/best`` (a fundus-train model dir: ``fundus-evaluate --model=DIR/best``).

Exit status: 0 done; 2 bad flags or inputs, all checked before anything is written (the
message names the flag and the fix); 1 a failure during the sweep.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

import dataclasses
import os

from absl import app, flags

from model import train_config
from tuning import hypermodel as hm
from tuning import results
from tuning import search as search_lib
from tuning import space as space_lib

FLAGS = flags.FLAGS
train_config.define_flags(FLAGS)
flags.DEFINE_string("directory", None, "Sweep results dir (summary.csv, logs/, best/, the "
                    "tuner's trials); started again it resumes.")
flags.DEFINE_enum("tuner", "random", list(search_lib.TUNERS), "Search algorithm.")
flags.DEFINE_integer("max_trials", 10, "Trials in total (hyperband: a cap; 0 = its own "
                     "schedule only).", lower_bound=0)
flags.DEFINE_integer("max_epochs", 0, "Hyperband: largest epoch budget of a trial "
                     "(0: --epochs).", lower_bound=0)
flags.DEFINE_integer("factor", 3, "Hyperband reduction factor.", lower_bound=2)
flags.DEFINE_integer("hyperband_iterations", 1, "Hyperband: repetitions of its schedule.",
                     lower_bound=1)
flags.DEFINE_integer("executions_per_trial", 1, "Trainings per trial (objective averaged).",
                     lower_bound=1)
flags.DEFINE_integer("keep_trials", 3, "Keep the model files of the best N finished "
                     "trials, delete the others' (0: keep all).", lower_bound=0)
flags.DEFINE_enum("best", "copy", list(results.BEST_MODES), "DIR/best from the best "
                  "trial: copy its checkpoint (retrains when absent), retrain it, or none.")
flags.DEFINE_string("space", None, "JSON search-space file: name -> {choice|min,max,...} "
                    "or a bare value that fixes a training flag (see configs/).")
flags.DEFINE_multi_string("range", [], "NAME=RANGE: a|b|c, lo..hi[:int][:log][:step=S], "
                          "or a value (fixed). Repeatable; beats --space.")
flags.DEFINE_list("search", None, "Names to search (others fixed at their flag values); "
                  "default: every name with a range in --space/--range.")
flags.DEFINE_integer("max_consecutive_failed_trials", 3, "Stop after this many failed "
                     "trials in a row.", lower_bound=1)


def base_config(fv, space: space_lib.SearchSpace) -> train_config.TrainConfig:
    """The trials' TrainConfig before searched values: the training flags, with the space
    file's fixed values for flags not given on the command line (``--range`` fixes always
    apply), ``model_dir`` = DIR/best."""
    cfg = dataclasses.replace(train_config.config_from_flags(fv),
                              model_dir=os.path.join(fv.directory, results.BEST_DIR))
    fixed = {}
    for name, value in space.fixed.items():
        given = name in fv and fv[name].present
        from_flag = any(r.split("=", 1)[0].strip() == name for r in fv.range)
        if not given or from_flag:
            fixed[name] = value
    return hm.apply_values(cfg, fixed)


def sweep_config(fv) -> search_lib.SweepConfig:
    return search_lib.SweepConfig(
        directory=fv.directory, tuner=fv.tuner, max_trials=fv.max_trials,
        max_epochs=fv.max_epochs, factor=fv.factor,
        hyperband_iterations=fv.hyperband_iterations,
        executions_per_trial=fv.executions_per_trial, seed=fv.seed, overwrite=fv.overwrite,
        keep_trials=fv.keep_trials, best=fv.best,
        max_consecutive_failed_trials=fv.max_consecutive_failed_trials)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    with _common.checking_inputs():  # every bad flag or input fails here, before writing
        if not FLAGS.directory:
            raise ValueError("--directory is required: where the sweep's results go")
        if not FLAGS.data:
            raise ValueError("--data is required: a fundus-convert output directory")
        if FLAGS.cv:
            raise ValueError("--cv is a fundus-train flag; a sweep trains one split per "
                             "trial (use --val_fold=i to tune on a fold)")
        default = not (FLAGS.space or FLAGS.range or FLAGS.search)
        if default:
            given = {n: FLAGS[n].value for n in space_lib.DEFAULT_SPACE if FLAGS[n].present}
            space = space_lib.default_space(FLAGS.weights, FLAGS.image_size, FLAGS.backbone,
                                            given)
        else:
            space = space_lib.load(FLAGS.space, FLAGS.range, FLAGS.search)
        base = base_config(FLAGS, space)
        sweep = sweep_config(FLAGS)
        sweep.validate()
        base.validate()
        hm.check_space(base, space)
        search_lib.role()
    if default:
        values = {n: getattr(base, n) for n in (*space_lib.DEFAULT_SPACE, "weights")}
        print(f"[fundus-tune] {space_lib.default_line(space, values)}", flush=True)
    search_lib.run_sweep(sweep, base, space)
    return 0


run = _common.entry(main)

if __name__ == "__main__":
    run()
