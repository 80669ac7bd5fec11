"""fundus-train: transfer learning of sex from fundus photos, one run, one fold or a CV.

    fundus-train --data=DATA --model_dir=RUNS/mnv2 --backbone=mobilenet_v2 \\
        --weights=../shared/weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5 \\
        --image_size=224 --epochs=12 --warmup_epochs=2

    fundus-train --data=DATA5 --model_dir=RUNS/cv --cv=5        # every fold, cv.json

    # or one fold per machine, then the CV summary from the copied fold dirs:
    fundus-train --data=DATA5 --model_dir=RUNS/cv/fold_2 --val_fold=2     # machine 3
    fundus-train --data=DATA5 --model_dir=RUNS/cv --cv=5 --collect      # cv.json, cv.png

    # one model over several machines (TF_CONFIG on each; --model_dir on a shared disk):
    TF_CONFIG='{"cluster": {"worker": ["vm1:2222", "vm2:2222"]}, "task": {"type": "worker",
        "index": 0}}' fundus-train --strategy=multi_worker --data=DATA --model_dir=SHARED/run

Killed and restarted with the same flags, it resumes from the last finished epoch. The
model dir holds best.keras, saved_model/, history.csv/json, run.json and logs/
(``tensorboard --logdir RUNS``). See :mod:`model.training`; the flags are
:mod:`model.train_config`'s. One run per model dir at a time: the run holds a lock on
``--model_dir`` (``.fundus.lock``), and a second run started on it refuses. Ctrl-C (SIGINT)
stops it with the last finished epoch's state kept in ``backup/``: the same command
resumes from there.

With ``--strategy=multi_worker`` (:mod:`model.multiworker`) every task runs the same
command; the chief (TF_CONFIG's chief, else worker 0) holds the lock and writes the model
dir, the other tasks write nothing there. Start-up waits at most
``--multi_worker_timeout_s`` for every task; a task that dies later ends the others
(exit 1); restarting all of them with the same command resumes.

Exit status: 0 trained; 2 bad flags or inputs (the message names the flag and the fix:
e.g. a shard missing or not the size its manifest records, or a --model_dir another run
holds, named with its pid; with --collect, a fold dir missing or unfinished, or trained
with other flags or data than the others: the message names the dirs and the flags; with
--strategy=multi_worker, TF_CONFIG unset, not JSON or without this task, a flag the
multi-worker loop does not support, or tasks that disagree on the data or the resume
point); 1 a failure during training (a damaged record met while reading: the message
names the shard; a full disk; a multi-worker task not answering within
--multi_worker_timeout_s at start-up, or stopping during the run); 130 interrupted by
Ctrl-C (resumable: rerun the same command). After a 1 or 130 the model dir keeps
``backup/``.
"""
from __future__ import annotations

from tools import _common  # noqa: F401  (quiet TF logs first)

import os
import signal
import sys
from typing import Sequence

from absl import app, flags

from model import augment, callbacks, cv_summary, distribute, multiworker, rundir
from model import train_config, training
from pipeline import fileio, integrity
from pipeline import lock as lock_lib

FLAGS = flags.FLAGS
train_config.define_flags(FLAGS)
flags.adopt_module_key_flags(train_config)   # --helpshort lists the training flags
flags.adopt_module_key_flags(augment)
flags.mark_flags_as_required(["data", "model_dir"])
flags.DEFINE_bool("collect", False, "With --cv=K: train nothing; write cv.json, cv.png and the "
                  "CV's HParams session from the finished model_dir/fold_0..K-1, each trained "
                  "by its own --val_fold=i --model_dir=model_dir/fold_i job (e.g. one per "
                  "machine). Refuses a missing or unfinished fold and folds trained with "
                  "different flags or data.")
flags.DEFINE_integer("multi_worker_timeout_s", 300, "--strategy=multi_worker: seconds to "
                     "wait at start-up for every task of TF_CONFIG to answer; past it the "
                     "job ends with exit 1 (TensorFlow itself would wait for ever).",
                     lower_bound=1)


#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, the shell's convention).
INTERRUPTED = 130


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    with _common.checking_inputs():       # an --augment_* value out of range, a bad flag
        cfg = train_config.config_from_flags(FLAGS)
        cfg.validate()
        if FLAGS.collect and not FLAGS.cv:
            raise app.UsageError("--collect needs --cv=K: the number of folds to collect")
        cluster = None
        if cfg.strategy == "multi_worker" and not FLAGS.collect:   # --collect trains nothing
            cluster = distribute.cluster_from_env()       # TF_CONFIG: bad is exit 2
            multiworker.check_supported(cfg, cluster, FLAGS.cv)
    # ConfigError (the --cv checks, the data vs the flags) and LockedError (another run
    # holds --model_dir) are bad input: exit 2
    # Ctrl-C: stop at the end of the running batch (callbacks.StopOnRequest), keeping the
    # last finished epoch's backup; outside a fit, or a second Ctrl-C: at once
    stop = callbacks.StopOnRequest(
        say=lambda text: print(f"fundus-train: {text}", file=sys.stderr, flush=True))
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.request())
    try:
        if cluster is not None:
            _train_multi_worker(cfg, cluster, [stop])
            return 0
        with lock_lib.DirLock(cfg.model_dir, "fundus-train", "--model_dir"):
            if FLAGS.collect:
                print(training.format_cv(cv_summary.collect_cv(cfg, FLAGS.cv)), flush=True)
            elif FLAGS.cv:
                summary = training.train_cv(cfg, FLAGS.cv, callbacks=[stop])
                print(training.format_cv(summary), flush=True)
            else:
                training.train(cfg, callbacks=[stop])
    except (multiworker.PeerLost, distribute.ClusterUnreachable) as e:   # exit 1
        raise _common.RunError(str(e)) from e
    except integrity.DataError as e:       # a damaged record met while training
        raise _common.RunError(f"{e}; --model_dir={cfg.model_dir} {_kept(cfg.model_dir)}: "
                               f"rerun the same command once the data is repaired") from e
    except KeyboardInterrupt:
        print(f"fundus-train: interrupted (Ctrl-C); --model_dir={cfg.model_dir} "
              f"{_kept(cfg.model_dir)}: rerun the same command to resume",
              file=sys.stderr, flush=True)
        return INTERRUPTED
    except Exception as e:
        if fileio.out_of_space(e):
            raise _common.RunError(
                f"--model_dir={cfg.model_dir}: out of disk space ({type(e).__name__}: "
                f"{_common.message(e).strip().splitlines()[0]}); "
                f"it {_kept(cfg.model_dir)}: free space and rerun the same command to "
                f"resume") from e
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _train_multi_worker(cfg: train_config.TrainConfig, cluster: distribute.Cluster,
                        extra: Sequence) -> None:
    """--strategy=multi_worker: connect to every task (the strategy first, before
    anything starts TensorFlow's runtime; exit 1 when one does not answer within
    --multi_worker_timeout_s), then train; only the chief locks and writes
    --model_dir."""
    def connect():
        with _common.checking_inputs():      # a port taken, clusters that differ: exit 2
            return distribute.connect_multi_worker(FLAGS.multi_worker_timeout_s)

    if not cluster.is_chief:
        multiworker.train(cfg, cluster, connect(), callbacks=extra)
        return
    with lock_lib.DirLock(cfg.model_dir, "fundus-train", "--model_dir"):
        multiworker.train(cfg, cluster, connect(), callbacks=extra)


def _kept(model_dir: str) -> str:
    """What an interrupted run left in ``model_dir`` to resume from: "keeps ..."."""
    if FLAGS.cv:
        return (f"keeps the finished folds and the running fold's last finished epoch "
                f"(fold_*/{rundir.BACKUP}/)")
    try:
        epochs = len(rundir.read_history(os.path.join(model_dir, rundir.HISTORY_CSV)))
    except (OSError, ValueError, KeyError):     # a row cut short by the interrupt
        return f"keeps the last finished epoch in {rundir.BACKUP}/"
    return (f"keeps the last finished epoch in {rundir.BACKUP}/ "
            f"({epochs} epoch{'s' if epochs != 1 else ''} in {rundir.HISTORY_CSV})")


run = _common.entry(main, input_errors=(train_config.ConfigError, lock_lib.LockedError))

if __name__ == "__main__":
    run()
