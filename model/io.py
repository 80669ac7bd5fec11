"""Loading trained models: one model dir, a ``.keras`` file, or an ensemble.

A *model path* is one of

* a model dir ``D`` holding ``D/best.keras`` (and normally ``D/run.json``);
* a ``.keras`` file (its ``run.json``, if any, is the one beside it);
* an *ensemble dir*: ``D/fold_*/best.keras`` (a ``fundus-train --cv`` run), or a dir whose
  sub-dirs are model dirs or ``--cv`` runs (a diverse ensemble: e.g. ``D/mnv2/fold_*`` and
  ``D/lite2/fold_*``, all members averaged).

Several paths (a list, or one comma-separated string) form one ensemble too. An ensemble's
probability is the mean of its members' probabilities. Members may use different input
sizes: :attr:`Member.image_size` comes from ``run.json["image_size"]``, else from the
model's input shape; callers resize per member (see :mod:`model.evaluation`).
"""
from __future__ import annotations

import glob
import os
from typing import Any, Iterable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

# imported for their side effect too: they register the project's custom Keras objects
# (package "fundus"), which a saved model needs to load
from model import augment, backbones, classifier, rundir  # noqa: F401

BEST = rundir.BEST_MODEL


class Member(NamedTuple):
    """One loaded model: ``(model, run_info)``; ``run_info["path"]`` is its ``.keras`` file."""

    model: Any            # keras.Model: uint8 [B, H, W, 3] -> probability of male
    run_info: dict

    @property
    def image_size(self) -> int:
        """Square input size in pixels the model was trained at."""
        return int(self.run_info["image_size"])

    @property
    def path(self) -> str:
        return str(self.run_info["path"])


def _split_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        out.extend(s.strip() for s in str(p).split(",") if s.strip())
    if not out:
        raise ValueError("no model path given (--model is empty)")
    return out


def is_model_dir(path: str) -> bool:
    """True when ``path`` is a dir holding ``best.keras``."""
    return os.path.isfile(os.path.join(path, BEST))


def _cv_folds(path: str) -> list[str]:
    """The finished ``fold_*`` model dirs of ``path`` in fold order."""
    return sorted((d for d in glob.glob(os.path.join(path, "fold_*")) if is_model_dir(d)),
                  key=_fold_key)


def ensemble_members(path: str) -> list[str]:
    """The member model dirs of an ensemble dir (sorted), or ``[]`` when it is not one.

    ``fold_*`` sub-dirs with ``best.keras`` take precedence (a CV run); otherwise every
    immediate sub-dir that is a model dir, and the folds of every sub-dir that is a CV run
    (sub-dirs in name order).
    """
    if not os.path.isdir(path):
        return []
    folds = _cv_folds(path)
    if folds:
        return folds
    out: list[str] = []
    for d in sorted(os.listdir(path)):
        sub = os.path.join(path, d)
        out.extend([sub] if is_model_dir(sub) else _cv_folds(sub))
    return out


def _fold_key(path: str) -> tuple[int, str]:
    tail = os.path.basename(path.rstrip(os.sep))[len("fold_"):]
    return (int(tail), path) if tail.isdigit() else (1 << 30, path)


def is_ensemble_dir(path: str) -> bool:
    """True when ``path`` is a dir of member model dirs (and has no ``best.keras`` itself)."""
    return not is_model_dir(path) and bool(ensemble_members(path))


def resolve_model_files(paths: str | Iterable[str]) -> list[str]:
    """Expand model paths to the list of ``.keras`` files they denote (ensemble order).

    Raises ``FileNotFoundError`` naming the path when it is none of the accepted forms.
    """
    files: list[str] = []
    for p in _split_paths(paths):
        if os.path.isfile(p) and p.endswith(".keras"):
            files.append(p)
        elif is_model_dir(p):
            files.append(os.path.join(p, BEST))
        elif is_ensemble_dir(p):
            runs = [p] + [os.path.join(p, d) for d in sorted(os.listdir(p))
                          if not is_model_dir(os.path.join(p, d))]
            unfinished = sorted(d for r in runs for d in glob.glob(os.path.join(r, "fold_*"))
                                if os.path.isdir(d) and not is_model_dir(d))
            if unfinished:
                raise FileNotFoundError(
                    f"--model: {p} is an unfinished CV run: no {BEST} in "
                    f"{', '.join(os.path.relpath(d, p) for d in unfinished)}; finish it, or pass "
                    "the finished fold dirs as a comma list")
            files.extend(os.path.join(d, BEST) for d in ensemble_members(p))
        elif not os.path.exists(p):
            raise FileNotFoundError(f"--model: {p} does not exist")
        else:
            raise FileNotFoundError(
                f"--model: {p} is not a model: expected a .keras file, a model dir with "
                f"{BEST}, or an ensemble dir with fold_*/{BEST} or model sub-dirs")
    return files


def _input_size(model) -> int:
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"model input shape {tuple(shape)} is not a fixed square image; "
                         "record image_size in run.json")
    return int(shape[1])


def sex_model(model):
    """``model`` reduced to its single ``sex`` output (a model with an age head has two)."""
    if len(model.outputs) == 1:
        return model
    try:
        out = model.get_layer("sex").output
    except ValueError as e:
        raise ValueError(f"model {model.name} has {len(model.outputs)} outputs and no layer "
                         "named 'sex'") from e
    return keras.Model(model.inputs[0], out, name=f"{model.name}_sex")


def load_model(keras_file: str) -> Member:
    """Load one ``.keras`` file (not compiled) with its run info.

    ``run_info`` is the run record (``model.rundir.read_run_record``) plus ``path`` (the
    file) and ``image_size`` (from run.json, else the model's input shape).
    """
    info = dict(rundir.read_run_record(keras_file))
    try:
        model = keras.saving.load_model(keras_file, compile=False)
    except Exception as e:  # keras raises many types; name the file
        raise ValueError(f"{keras_file}: cannot load the Keras model "
                         f"({type(e).__name__}: {e})") from e
    model = sex_model(model)
    info["path"] = keras_file
    info["image_size"] = rundir.image_size(info) or _input_size(model)
    return Member(model, info)


def load_models(paths: str | Iterable[str]) -> list[Member]:
    """Load every member of the model path(s): a list of ``(keras.Model, run_info)``."""
    return [load_model(f) for f in resolve_model_files(paths)]


def image_sizes(members: Sequence[Member]) -> list[int]:
    """Distinct member input sizes, ascending."""
    return sorted({m.image_size for m in members})


TTAS = ("none", "flip")              # what make_predict_fn does
TTA_CHOICES = ("auto", *TTAS)         # what the --tta flags accept (resolve_tta)


def resolve_tta(tta: str, members: Sequence[Member]) -> str:
    """``none`` or ``flip`` for ``--tta=tta``: ``auto`` is ``flip`` when every member was
    trained with ``fundus-train --tta=flip`` (its run.json ``val_tta``), so a recipe's
    ensemble is evaluated the way its CV figures were measured; else ``none``."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"--tta={tta!r}: use one of {', '.join(TTA_CHOICES)}")
    if tta != "auto":
        return tta
    flips = [rundir.val_tta(m.run_info) == "flip" for m in members]
    return "flip" if flips and all(flips) else "none"


def make_predict_fn(model, tta: str = "none"):
    """A compiled ``uint8 [B, H, W, 3] -> float32 [B]`` probability function.

    ``tta="flip"`` averages the prediction of the image and its left-right mirror.
    """
    if tta not in TTAS:
        raise ValueError(f"--tta must be none or flip, got {tta!r}")

    @tf.function(reduce_retracing=True)
    def fn(images):
        p = tf.reshape(tf.cast(model(images, training=False), tf.float32), [-1])
        if tta == "flip":
            q = tf.reshape(tf.cast(model(tf.reverse(images, axis=[2]), training=False),
                                   tf.float32), [-1])
            p = (p + q) / 2.0
        return p

    return fn


def predict_arrays(model, images: np.ndarray, batch_size: int = 32,
                   tta: str = "none") -> np.ndarray:
    """Probabilities float32 ``[N]`` of one model on uint8 ``[N, H, W, 3]`` images."""
    fn = make_predict_fn(model, tta)
    out = [fn(images[i:i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros([0], np.float32)


def ensemble_mean(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over members of aligned probability arrays ``[N]`` -> float32 ``[N]``."""
    if not probabilities:
        raise ValueError("an ensemble needs at least one member")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    return stack.mean(axis=0).astype(np.float32)
