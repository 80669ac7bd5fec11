"""Evaluate a model (or an ensemble) on a split of a converted data set.

:func:`evaluate` predicts the split (and the validation records, for the Youden threshold),
computes every metric per image and per patient (:func:`compute_metrics`), and writes

* ``metrics.json``  -- ``image.auc``, ``image.auc_ci95`` [low, high], ``patient.auc``,
  ``patient.auc_ci95``, ``majority_accuracy``, ``n_images``, ``n_patients``, and more;
* ``predictions.csv`` -- file, patient, eye, sex, probability (+ label, member columns);
* ``roc.png`` and ``reliability.png`` (matplotlib, Agg);
* ``tensorboard/`` -- the same scalars and figures (``tf.summary``).

Probabilities are P(male) in [0, 1]; an ensemble's is the mean of its members'. A patient's
probability is the mean of their eyes'. Intervals are 95% percentile intervals of a
bootstrap that resamples patients (both eyes together).

Threshold chosen on validation data (never on the evaluated split): members whose
``run.json`` names a ``val_fold`` (``flags.val_fold``, :func:`model.rundir.val_fold`) on
data converted with ``--folds`` contribute their own out-of-fold predictions (fold ==
val_fold of the train and val splits); otherwise the ensemble predicts the ``val`` split.
Without validation records the threshold is 0.5 and ``metrics.json`` says so in
``threshold.note``.

This module predicts (:func:`predict_split`, the one prediction path that training's
validation figures share) and runs the job; the metric values are computed by
:mod:`model.eval_metrics` and the figures and TensorBoard run by :mod:`model.eval_figures`.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from model import eval_figures, rundir
from model import eval_metrics as EM
from model import io as model_io
from pipeline import fileio, integrity, reader
from pipeline import manifest as manifest_lib
from pipeline import progress as progress_lib

CSV_COLUMNS = ["file", "patient", "eye", "sex", "probability"]
OOF = "oof"      # --split=oof: each fold model on its own validation fold
JOB = "fundus-evaluate"   # the progress lines' label


# ------------------------------------------------------------------------- prediction

def _text(t) -> str:
    v = t.numpy() if hasattr(t, "numpy") else t
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _read_config(image_size: int, batch_size: int) -> reader.ReadConfig:
    return reader.ReadConfig(image_size=image_size, batch_size=batch_size, with_meta=True,
                             normal_only=True, cache_budget_gb=0.0)


def _run_pass(models: dict[int, Any], data_dir: str, split, image_size: int,
              batch_size: int, tta: str, bar: progress_lib.Progress
              ) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """One read of a split at ``image_size``; every model of that size predicts each batch
    (``bar`` counts the images)."""
    cfg = _read_config(image_size, batch_size)
    ds = reader.make_dataset(data_dir, split, False, cfg)
    fns = {i: model_io.make_predict_fn(m, tta) for i, m in models.items()}
    rows: dict[str, list] = {"file": [], "patient": [], "eye": [], "label": []}
    probs: dict[int, list[np.ndarray]] = {i: [] for i in models}
    for images, labels, meta in ds:
        for i, fn in fns.items():
            probs[i].append(fn(images).numpy())
        rows["label"].extend(np.asarray(labels).reshape(-1).tolist())
        rows["file"].extend(_text(v) for v in meta["filename"])
        rows["patient"].extend(_text(v) for v in meta["patient_id"])
        rows["eye"].extend(_text(v) for v in meta["eye"])
        bar.update(len(rows["file"]))
    bar.close()
    frame = pd.DataFrame(rows)
    out = {i: (np.concatenate(v) if v else np.zeros([0], np.float32)).astype(np.float32)
           for i, v in probs.items()}
    return frame, out


def _keys(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    return list(zip(frame["patient"], frame["eye"], frame["file"]))


def member_name(member: model_io.Member) -> str:
    """A member's short name: its model dir's name (``fold_1``), else its file's."""
    return os.path.basename(os.path.dirname(member.path)) or os.path.basename(member.path)


def pass_label(members: Sequence[model_io.Member], chosen: Sequence[int], size: int) -> str:
    """Who predicts in one read at ``size`` px: ``"fold_1, 384 px"`` (one member),
    ``"5 models, 384 px"`` (all of them) or ``"models 1,3 of 5, 384 px"`` (some)."""
    if len(members) == 1:
        who = member_name(members[0])
    elif len(chosen) == len(members):
        who = f"{len(members)} models"
    else:
        who = f"models {','.join(str(i + 1) for i in chosen)} of {len(members)}"
    return f"{who}, {size} px"


def predict_split(members: Sequence[model_io.Member], data_dir: str, split, *,
                  batch_size: int = 32, tta: str = "none", progress: bool = False,
                  label: str = JOB) -> pd.DataFrame:
    """Predict every normal-eye record of ``split`` (a name or a ``reader.SplitSpec``):
    one row per image. Columns: ``file, patient, eye, sex ('male'/'female'), label (1.0
    male), probability`` (P(male) in [0, 1], the ensemble mean) and ``member_k`` for each
    member when there are several. Members of different input sizes each get the records
    decoded at their own size (one read of the split per distinct size); rows are aligned
    on (patient, eye, file).

    ``progress``: a :class:`pipeline.progress.Progress` on stderr per read, starting
    ``{label} {split}, {who}, {size} px`` (:func:`pass_label`); off by default (training's
    validation figures use this function).
    """
    if not members:
        raise ValueError("no models to evaluate")
    what = split if isinstance(split, str) else split.name
    total = _count(data_dir, split) if progress else 0
    base: pd.DataFrame | None = None
    member_p: dict[int, np.ndarray] = {}
    for size in model_io.image_sizes(members):
        models = {i: m.model for i, m in enumerate(members) if m.image_size == size}
        bar = progress_lib.Progress(f"{label} {what}, {pass_label(members, list(models), size)}",
                                    "images", total, progress)
        frame, probs = _run_pass(models, data_dir, split, size, batch_size, tta, bar)
        if base is None:
            base = frame
            member_p.update(probs)
            continue
        if _keys(frame) != _keys(base):           # align a pass read in another order
            index = {k: j for j, k in enumerate(_keys(frame))}
            if len(index) != len(frame) or set(index) != set(_keys(base)):
                raise ValueError(f"{data_dir} split {split}: records differ between reads at "
                                 "different image sizes; cannot align ensemble members")
            order = np.array([index[k] for k in _keys(base)], dtype=np.int64)
            probs = {i: p[order] for i, p in probs.items()}
        member_p.update(probs)
    assert base is not None
    base["sex"] = np.where(base["label"] >= 0.5, "male", "female")
    base["probability"] = model_io.ensemble_mean([member_p[i] for i in range(len(members))])
    if len(members) > 1:
        for i in range(len(members)):
            base[f"member_{i}"] = member_p[i]
    return base[CSV_COLUMNS + [c for c in base.columns if c not in CSV_COLUMNS]]


# ------------------------------------------------------------------------- validation

def _count(data_dir: str, spec) -> int:
    try:
        return reader.count_records(data_dir, spec, normal_only=True)
    except KeyError:                       # the split is not in this data set
        return 0


def _own_fold_frames(members: Sequence[model_io.Member], folds: Sequence[int], data_dir: str,
                     *, batch_size: int, tta: str, progress: bool) -> list[pd.DataFrame]:
    """Predictions on each validation fold (normal eyes of the train+val splits,
    ``reader.training_split``) by the members whose ``val_fold`` it is, averaged when
    several recipes share a fold (a diverse ensemble of CV runs), with a ``fold`` column;
    folds with no records are left out. ``progress``: one progress line per fold."""
    by_fold: dict[int, list[model_io.Member]] = {}
    for m, f in zip(members, folds):
        by_fold.setdefault(int(f), []).append(m)
    parts = []
    for j, (f, ms) in enumerate(sorted(by_fold.items())):
        spec = reader.training_split(data_dir, f)[1]
        if _count(data_dir, spec):
            parts.append(predict_split(ms, data_dir, spec, batch_size=batch_size, tta=tta,
                                       progress=progress,
                                       label=f"{JOB} fold {f} ({j + 1}/{len(by_fold)})"
                                       ).assign(fold=f))
    return parts


def check_fold_members(members: Sequence[model_io.Member], folds: Sequence[int]) -> None:
    """Out-of-fold predictions of an ensemble need every fold predicted by the same number
    of models (one per recipe) and no model twice; ValueError naming them otherwise."""
    paths = [os.path.realpath(m.path) for m in members]
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise ValueError(f"--split=oof: {', '.join(twice)} given twice (several models "
                         f"validate on the same fold only as different recipes)")
    counts = {f: folds.count(f) for f in set(folds)}
    if len(set(counts.values())) > 1:
        raise ValueError(f"--split=oof: the folds have different numbers of models "
                         f"({dict(sorted(counts.items()))}); give each recipe's full set "
                         f"of fold models")


def validation_predictions(members: Sequence[model_io.Member], data_dir: str, split: str, *,
                           batch_size: int = 32, tta: str = "none", progress: bool = False
                           ) -> tuple[pd.DataFrame | None, str, str | None]:
    """Predictions on the validation records, for choosing a threshold.

    Returns ``(frame or None, source, note)``: out-of-fold predictions of fold members on
    their own ``val_fold`` (data with folds; ``reader.training_split``), else the ensemble
    on the ``val`` split, else ``None`` with a note saying why. ``progress``: progress
    lines on stderr (:func:`predict_split`).
    """
    man = manifest_lib.load(data_dir)
    folds = [rundir.val_fold(m.run_info) for m in members]
    k = int(man.get("folds") or 0)
    if k >= 2 and all(f is not None and f < k for f in folds):
        parts = _own_fold_frames(members, folds, data_dir, batch_size=batch_size, tta=tta,
                                 progress=progress)
        if parts:
            frame = pd.concat(parts, ignore_index=True)
            src = (f"out-of-fold: each member on its own val_fold (folds "
                   f"{sorted(set(folds))} of the train+val splits)")
            note = None if len(members) == 1 else (
                "ensemble threshold chosen on the members' out-of-fold predictions")
            if split in ("train", "val"):
                note = f"the evaluated split {split!r} overlaps the validation folds"
            return frame, src, note
    if split != "val" and _count(data_dir, "val"):
        return predict_split(members, data_dir, "val", batch_size=batch_size, tta=tta,
                             progress=progress), "val split", None
    why = ("the evaluated split is 'val'" if split == "val"
           else f"no validation records in {data_dir} (empty or no 'val' split, no folds "
                "matching the models' val_fold)")
    return None, "none", f"{why}: Youden threshold not chosen, {EM.DEFAULT_THRESHOLD} used"


def out_of_fold_predictions(members: Sequence[model_io.Member], data_dir: str, *,
                            batch_size: int = 32, tta: str = "none", progress: bool = False
                            ) -> pd.DataFrame:
    """``--split=oof``: every member on its own validation fold (its run.json
    ``val_fold``; normal eyes of the train+val splits, as ``fundus-train`` validated it),
    concatenated, with a ``fold`` column. For a ``fundus-train --cv=K`` dir this is the
    CV's pooled out-of-fold prediction; for several CV runs on the same data (a diverse
    ensemble) each fold's models are averaged, as the ensemble would predict an eye none
    of its members trained on. Raises ValueError naming the member without a
    fold, a fold the data lacks, a model given twice, or folds with different numbers of
    models. ``progress``: one progress line per fold on stderr."""
    k = int(manifest_lib.load(data_dir).get("folds") or 0)
    folds = [rundir.val_fold(m.run_info) for m in members]
    for m, f in zip(members, folds):
        if f is None or f >= k:
            raise ValueError(f"--split=oof: {m.path} has no validation fold of {data_dir} "
                             f"(run.json val_fold {f}, data folds {k}); oof needs the fold "
                             f"models of fundus-train --cv on the data they were trained on")
    check_fold_members(members, folds)
    parts = _own_fold_frames(members, folds, data_dir, batch_size=batch_size, tta=tta,
                             progress=progress)
    if not parts:
        raise ValueError(f"--split=oof: no normal-fundus records in the models' folds "
                         f"{sorted(folds)} of {data_dir}")
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------- the job

@integrity.reads_data("data_dir")    # a damaged record met: DataError naming the shard
def evaluate(model_paths: str | Iterable[str] | None, data_dir: str, split: str = "test",
             output_dir: str | None = None, *, tta: str = "none", batch_size: int = 32,
             bootstrap: int = 2000, seed: int = 0,
             members: Sequence[model_io.Member] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Evaluate model(s) on ``split`` of ``data_dir``; write outputs when ``output_dir``.

    ``model_paths``: a model dir, ``.keras`` file, ensemble dir, or several (list or comma
    string); or pass loaded ``members``. ``tta``: none, flip, or auto (flip when every
    member was trained with ``--tta=flip``, :func:`model.io.resolve_tta`); metrics.json
    records the one used. ``progress``: a progress line on stderr for every read of a
    split (the evaluated split per input size, each member's validation fold; the jobs'
    ``--noprogress`` turns them off). Returns the metrics dict written to metrics.json.
    Before reading, the shards it will read must be there at their recorded sizes
    (``manifest.ShardError``: bad input); a damaged record met while reading raises
    ``integrity.DataError`` naming the shard.
    """
    if members is None:
        members = model_io.load_models(model_paths)
    tta = model_io.resolve_tta(tta, members)
    man = manifest_lib.load(data_dir)
    # the shards this reads are there at their recorded sizes (else ShardError: bad input):
    # the split, and the validation records of the Youden threshold (with folds: each
    # member's own fold, in train + val)
    folded = int(man.get("folds") or 0) >= 2
    reads = {split, "val"} | ({"train"} if folded or split == OOF else set())
    manifest_lib.check_shards(data_dir, tuple(sorted(reads - {OOF})), man)
    if split == OOF:
        frame = out_of_fold_predictions(members, data_dir, batch_size=batch_size, tta=tta,
                                        progress=progress)
        val, source = None, "none"
        note = (f"--split=oof: the predictions are the validation folds themselves: Youden "
                f"threshold not chosen, {EM.DEFAULT_THRESHOLD} used")
    else:
        if split not in man["splits"] or manifest_lib.split_size(man, split) == 0:
            raise ValueError(f"--split={split}: {data_dir} has no records in split "
                             f"{split!r} (splits: {sorted(man['splits'])}, or oof)")
        frame = predict_split(members, data_dir, split, batch_size=batch_size, tta=tta,
                              progress=progress)
        val, source, note = validation_predictions(members, data_dir, split,
                                                   batch_size=batch_size, tta=tta,
                                                   progress=progress)
    if not len(frame):
        raise ValueError(f"--split={split}: no normal-fundus records in {data_dir}")
    thresholds, tnote = EM.youden_thresholds(val)
    result = EM.compute_metrics(frame, thresholds, bootstrap=bootstrap, seed=seed)
    result = {
        "n_images": result["n_images"], "n_patients": result["n_patients"],
        "majority_accuracy": result["majority_accuracy"],
        "image": result["image"], "patient": result["patient"],
        "threshold": {"image": EM.json_float(thresholds["image"]),
                      "patient": EM.json_float(thresholds["patient"]),
                      "source": source,
                      "n_validation_images": int(len(val)) if val is not None else 0,
                      "note": tnote or note},
        "data": os.path.abspath(data_dir), "split": split, "tta": tta,
        "bootstrap": {"n": int(bootstrap), "seed": int(seed), "resampled": "patients"},
        "models": [m.path for m in members],
        "members": EM.member_metrics(frame, members) if split != OOF else None,
    }
    if split == OOF:
        result["cv"] = EM.fold_metrics(frame)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        table = frame.assign(label=frame["label"].astype(np.int64))
        fileio.write_atomic(os.path.join(output_dir, "predictions.csv"),
                            lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
        name = "ensemble of %d" % len(members) if len(members) > 1 else os.path.basename(
            os.path.dirname(members[0].path)) or members[0].path
        roc_title = f"ROC, {split} split, {name}" + (" + flip TTA" if tta == "flip" else "")
        pngs = {
            "roc": eval_figures.plot_roc(frame, result, os.path.join(output_dir, "roc.png"),
                                         roc_title),
            "reliability": eval_figures.plot_reliability(
                frame, result, os.path.join(output_dir, "reliability.png")),
        }
        scalars = eval_figures.flat_scalars({"image": result["image"],
                                             "patient": result["patient"]})
        eval_figures.write_tensorboard(os.path.join(output_dir, "tensorboard"), scalars, pngs)
        result["outputs"] = {"predictions": "predictions.csv", "roc": "roc.png",
                             "reliability": "reliability.png", "tensorboard": "tensorboard"}
        # strict JSON: NaN never appears (EM.json_float turned it into null)
        fileio.write_json(os.path.join(output_dir, "metrics.json"), result, sort_keys=False,
                          allow_nan=False)
    return result


def lookup(metrics: dict, dotted: str) -> Any:
    """``metrics["image"]["auc"]`` as ``lookup(metrics, "image.auc")``."""
    cur: Any = metrics
    for part in dotted.split("."):
        cur = cur[part]
    return cur
