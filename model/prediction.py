"""Predict the sex of new fundus photos with a model or an ensemble (fundus-predict).

Every photo takes the converter's path exactly, so a photo scores as its converted record
does in ``fundus-evaluate`` (agreement to float rounding):

1. :func:`pipeline.fundus.prepare_file` -- load, crop the fundus, square, resize to the
   *stored* size with LANCZOS, encode JPEG at the converter's quality (the same bytes the
   converter writes into a shard);
2. :func:`pipeline.schema.decode_image` -- decode that JPEG and resize to the member's
   training size (what the reader does);
3. the model (and its left-right mirror with ``tta="flip"``); an ensemble averages.

The stored size and JPEG quality are the training data's (:func:`stored_format`): what the
run record says (``model.rundir.stored_format``: ``data.stored_size`` /
``data.jpeg_quality``, copied from the manifest at training time, so a model dir that
travelled without its data still knows them), else the manifest of ``--data`` or of the
data dir the run record names, else the defaults 512 px / quality 95.

Inputs that cannot be read or hold no fundus get a row with ``error`` set; the others go on.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from model import io as model_io
from model import rundir
from pipeline import fileio, fundus, schema
from pipeline import manifest as manifest_lib
from pipeline import progress as progress_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
DEFAULT_STORED_SIZE = 512
DEFAULT_JPEG_QUALITY = manifest_lib.DEFAULT_JPEG_QUALITY
CSV_COLUMNS = ["file", "probability_male", "predicted_sex", "error"]
JOB = "fundus-predict"   # the progress line's label


@dataclasses.dataclass(frozen=True)
class StoredFormat:
    """How the training data stored each fundus: square side (pixels), JPEG quality."""

    image_size: int
    jpeg_quality: int
    source: str           # where the values came from (for logs and the CSV's reader)


def _manifest_format(data_dir: str) -> tuple[int, int] | None:
    try:
        return manifest_lib.stored_format(manifest_lib.load(data_dir))
    except (OSError, ValueError):
        return None


def member_format(info: dict, data_dir: str | None = None) -> StoredFormat | None:
    """The stored format one member's run record (or ``data_dir``'s manifest, or the
    manifest of the data dir the record names) gives."""
    recorded = rundir.stored_format(info)
    if recorded:
        return StoredFormat(recorded[0], recorded[1],
                            f"{info.get('path', rundir.RUN_JSON)}: {rundir.RUN_JSON}")
    named = rundir.data_dir(info)
    for d in ([data_dir] if data_dir else []) + ([named] if named else []):
        found = _manifest_format(d)
        if found:
            return StoredFormat(found[0], found[1], f"{d}/manifest.json")
    return None


def stored_format(members: Sequence[model_io.Member], data_dir: str | None = None,
                  stored_size: int | None = None, jpeg_quality: int | None = None
                  ) -> StoredFormat:
    """Resolve the stored size/quality; explicit ``stored_size``/``jpeg_quality`` win.

    Raises ``ValueError`` when ensemble members were trained on differently stored data.
    """
    found = {m.path: member_format(m.run_info, data_dir) for m in members}
    known = {(f.image_size, f.jpeg_quality) for f in found.values() if f}
    if len(known) > 1:
        raise ValueError("ensemble members were trained on data stored differently: "
                         + "; ".join(f"{p}: {f.image_size} px q{f.jpeg_quality}"
                                     for p, f in found.items() if f)
                         + " (pass --stored_size and --jpeg_quality)")
    base = next((f for f in found.values() if f), None)
    size = stored_size or (base.image_size if base else DEFAULT_STORED_SIZE)
    quality = jpeg_quality or (base.jpeg_quality if base else DEFAULT_JPEG_QUALITY)
    if stored_size or jpeg_quality:
        source = "flags"
    else:
        source = base.source if base else ("defaults (no stored format in run.json and no "
                                           "manifest)")
    return StoredFormat(int(size), int(quality), source)


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def expand_inputs(inputs: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files from files, folders (recursive, image extensions only) and globs.

    Returns ``(files, problems)``; ``problems`` are ``(input, error)`` for inputs that
    match nothing. Order: inputs in order, each folder/glob sorted; duplicates dropped.
    """
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    for raw in inputs:
        item = os.path.expanduser(str(raw))
        if os.path.isdir(item):
            found = sorted(os.path.join(root, f) for root, _, names in os.walk(item)
                           for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                problems.append((item, "folder holds no image files "
                                       f"({', '.join(IMAGE_EXTENSIONS)})"))
            files.extend(found)
        elif _has_magic(item) and not os.path.exists(item):
            found = sorted(f for f in glob.glob(item, recursive=True) if os.path.isfile(f))
            if not found:
                problems.append((item, "no file matches this pattern"))
            files.extend(found)
        else:
            files.append(item)            # a missing file becomes an error row later
    seen: set[str] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, problems


def prepare_one(path: str, fmt: StoredFormat) -> tuple[bytes | None, str]:
    """The converter's JPEG of one photo, or ``(None, error)``."""
    try:
        return fundus.prepare_file(path, fmt.image_size, fmt.jpeg_quality), ""
    except fundus.FundusError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - any other decoder failure is this file's error
        return None, f"{type(e).__name__}: {e}"


def _decode_batches(jpegs: list[bytes], image_size: int, batch_size: int):
    """uint8 ``[B, S, S, 3]`` batches of ``schema.decode_image`` (the reader's decode)."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs, tf.string))
    ds = ds.map(lambda b: schema.decode_image(b, image_size), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_jpegs(members: Sequence[model_io.Member], jpegs: list[bytes], *,
                  batch_size: int = 32, tta: str = "none",
                  on_batch: Callable[[int], None] | None = None
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(ensemble mean [N], per-member [N] arrays)`` for stored-format JPEG bytes.
    ``on_batch(n)``: called after each model predicted a batch of ``n`` images (for a
    progress display: ``N * len(members)`` in all)."""
    per_member: list[np.ndarray | None] = [None] * len(members)
    if not jpegs:
        empty = np.zeros([0], np.float32)
        return empty, [empty for _ in members]
    for size in model_io.image_sizes(members):
        idx = [i for i, m in enumerate(members) if m.image_size == size]
        fns = {i: model_io.make_predict_fn(members[i].model, tta) for i in idx}
        outs: dict[int, list[np.ndarray]] = {i: [] for i in idx}
        for images in _decode_batches(jpegs, size, batch_size):
            for i, fn in fns.items():
                outs[i].append(fn(images).numpy())
                if on_batch is not None:
                    on_batch(int(images.shape[0]))
        for i in idx:
            per_member[i] = np.concatenate(outs[i]).astype(np.float32)
    members_p = [p for p in per_member if p is not None]
    return model_io.ensemble_mean(members_p), members_p


def predict_files(members: Sequence[model_io.Member], files: Sequence[str], fmt: StoredFormat,
                  *, batch_size: int = 32, tta: str = "none", threshold: float = 0.5,
                  workers: int = 2, chunk: int = 256, progress: bool = True) -> pd.DataFrame:
    """One row per file: ``file, probability_male, predicted_sex, error``.

    ``predicted_sex`` is ``male`` when the probability >= ``threshold``; rows with an
    error have empty probability and sex. Files are prepared ``workers`` at a time and
    predicted ``chunk`` at a time (memory stays bounded for any number of photos).
    ``progress``: a :class:`pipeline.progress.Progress` over the photos on stderr
    (``--noprogress`` turns it off), moving as each model predicts each batch.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold={threshold}: must be in [0, 1]")
    rows = []
    n_models = max(1, len(members))
    who = f"{len(members)} models" if len(members) > 1 else "1 model"
    bar = progress_lib.Progress(f"{JOB} ({who})", "photos", len(files), progress)
    work = errors = 0               # images x models predicted; photos without a fundus

    def predicted(n: int) -> None:
        nonlocal work
        work += n
        bar.update(done + (work // n_models), errors=errors)

    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for start in range(0, len(files), chunk):
            part = list(files[start:start + chunk])
            prepared = list(pool.map(lambda f: prepare_one(f, fmt), part))
            ok = [i for i, (jpeg, _) in enumerate(prepared) if jpeg is not None]
            done, work = start + len(part) - len(ok), 0
            errors += len(part) - len(ok)
            bar.update(done, errors=errors)
            probs, _ = predict_jpegs(members, [prepared[i][0] for i in ok],
                                     batch_size=batch_size, tta=tta, on_batch=predicted)
            p_of = dict(zip(ok, probs.tolist()))
            for i, f in enumerate(part):
                if i in p_of:
                    p = float(p_of[i])
                    rows.append({"file": f, "probability_male": p,
                                 "predicted_sex": "male" if p >= threshold else "female",
                                 "error": ""})
                else:
                    rows.append({"file": f, "probability_male": np.nan, "predicted_sex": "",
                                 "error": prepared[i][1]})
            bar.update(start + len(part), errors=errors)
    bar.close()
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def model_threshold(members: Sequence[model_io.Member]) -> float:
    """The Youden threshold ``fundus-train`` chose on each member's validation images
    (``model.rundir.youden_threshold``), mean over members; raises ``ValueError`` naming
    the members whose run record has none (a bare ``.keras`` file, or an older run)."""
    values = [rundir.youden_threshold(m.run_info) for m in members]
    missing = [m.path for m, v in zip(members, values) if v is None]
    if missing:
        raise ValueError("--threshold=youden: no youden_threshold in the run.json of "
                         + ", ".join(missing) + "; retrain with this version of "
                         "fundus-train, or pass --threshold=P")
    return float(np.mean(values))


def write_csv(path: str, frame: pd.DataFrame) -> str:
    """Atomic CSV write (probabilities with 6 decimals)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return fileio.write_text(path, frame.to_csv(index=False, float_format="%.6f"))
