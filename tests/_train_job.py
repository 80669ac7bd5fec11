"""``fundus-train`` run in the test process, and a simulated preemption.

:func:`train_main` gives the job's exit status for an argv (exceptions mapped as by its
console entry point) without a subprocess's TensorFlow start-up; :func:`train_config`
the ``TrainConfig`` the job builds from that argv (so a direct ``training.train`` matches
a later job run); :class:`Crash` kills a run at the start of an epoch, as a preempted VM.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

import keras
from absl import flags

from model import train_config as train_config_lib


@contextlib.contextmanager
def _parsed(argv: list[str]) -> Iterator[flags.FlagValues]:
    """absl's FLAGS parsed from ``fundus-train`` + ``argv``, reset afterwards."""
    importlib.import_module("tools.train")          # defines the flags
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["fundus-train", *argv])
    try:
        yield flags.FLAGS
    finally:
        flags.FLAGS.unparse_flags()


def train_main(argv: list[str]) -> int:
    """tools.train's exit status for ``argv``, in-process, on fresh flag values."""
    job = importlib.import_module("tools.train")
    with _parsed(argv):
        return job.run.call(["fundus-train"])


def train_config(argv: list[str]) -> train_config_lib.TrainConfig:
    """The TrainConfig fundus-train builds from ``argv``."""
    with _parsed(argv) as fv:
        return train_config_lib.config_from_flags(fv)


class Crash(keras.callbacks.Callback):
    """A preempted VM: dies at the start of epoch ``at`` (0-based)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise RuntimeError(f"preempted in epoch {epoch + 1}")
