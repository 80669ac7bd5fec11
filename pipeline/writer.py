"""ODIR-5K annotations + photos -> sharded TFRecords + ``manifest.json`` (fundus-convert).

Flow of :func:`convert`:

1. read the annotation sources (:func:`pipeline.annotations.read_many`), select eyes
   (:func:`pipeline.selection.select`), assign patient-disjoint splits and folds
   (:mod:`pipeline.splits`; a split given by the source wins);
2. plan the shards (:func:`pipeline.sharding.plan`: both sexes in every shard, sizes
   within one, ``{split}-{i:05d}-of-{n:05d}.tfrecord``);
3. fingerprint the inputs (sha256 of every annotation file and every photo, plus the
   flags that shape the output and the Pillow/libjpeg versions) and compare it with what
   the output directory holds: a finished conversion of the same inputs is "up to date"
   (nothing is written); a killed one is resumed (shards completed and recorded in
   ``.fundus-convert-progress.json`` with a matching sha256 are kept, the rest rewritten);
   output from other inputs or flags is refused unless ``overwrite``;
4. prepare the photos in a process pool (:func:`pipeline.fundus.prepare_file`, ordered
   ``imap``), stream each shard to a temporary name and rename it into place when
   complete (:func:`pipeline.fileio.write_atomic`); a photo that fails is a listed skip
   with its reason;
5. write ``manifest.json`` (:mod:`pipeline.manifest`; each shard with its ``records``,
   ``sha256`` and ``bytes``) atomically and drop the progress file.

Steps 3-5 hold the output dir's lock (:class:`pipeline.lock.DirLock`): a second conversion
started on the same dir refuses with ``LockedError`` instead of interleaving. A write that
fails (a full disk) removes its temporary file; the shards already finished and the
progress file stay, so the same command resumes once there is space.

Every byte of the output is a function of the inputs and the output-shaping flags (not
of ``workers``), so an interrupted run that is started again ends byte-identical.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import re
import time
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import PIL
import tensorflow as tf
from PIL import features

from pipeline import annotations as annotations_lib
from pipeline import fileio
from pipeline import fundus
from pipeline import lock as lock_lib
from pipeline import manifest as manifest_lib
from pipeline import progress as progress_lib
from pipeline import schema
from pipeline import selection as selection_lib
from pipeline import sharding
from pipeline import splits as splits_lib

FORMAT_VERSION = 1
PROGRESS_NAME = ".fundus-convert-progress.json"
#: Smallest output size, pixels.
MIN_IMAGE_SIZE = 32


class ConvertError(RuntimeError):
    """A conversion that cannot start (bad flags, refused output directory)."""


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Everything :func:`convert` needs.

    annotations: annotation files (csv/xlsx) or class-folder trees, in order.
    images: image folders, one for all annotations or one per annotation (paired in
      order); a class-folder tree defaults to itself. Required for annotation files.
    output: output directory (created).
    image_size: stored square side, pixels (>= 32).
    jpeg_quality: 1..100.
    split: (train, val, test) fractions or ``"0.7,0.15,0.15"``; a source's own split wins.
    seed: splits, folds and record order.
    folds: K >= 2 cross-validation folds over the non-test patients, 0 for none.
    selection: ``normal`` | ``normal_or_quality`` | ``all`` (:mod:`pipeline.selection`).
    num_shards: shards per split (int, or ``(train, val, test)``); None: automatic
      (~150 MB a shard, >= 8 for train, >= 1 for val/test; never more than the split's
      eyes of its rarer sex, or its eyes when it holds one sex).
    workers: processes preparing photos (default: all cores); does not change output.
    strict: the caller should fail when anything was skipped (recorded, not enforced here).
    overwrite: replace an output directory made from other inputs or flags.
    progress: a progress line on stderr about once a second.
    """

    annotations: Sequence[str]
    images: Sequence[str] = ()
    output: str = ""
    image_size: int = 512
    jpeg_quality: int = 95
    split: Sequence[float] | str = (0.7, 0.15, 0.15)
    seed: int = 0
    folds: int = 0
    selection: str = "normal"
    num_shards: int | Sequence[int] | None = None
    workers: int | None = None
    strict: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("annotations", "images"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            object.__setattr__(self, name, tuple(os.fspath(v) for v in value))
        if not isinstance(self.split, str):
            object.__setattr__(self, "split", tuple(float(v) for v in self.split))


@dataclasses.dataclass
class Result:
    """What :func:`convert_with_status` did: ``status`` is ``"converted"``, ``"resumed"``
    or ``"up to date"``; ``seconds`` wall time; ``processed`` photos prepared this run;
    ``phases``: wall seconds of ``read`` (annotations, selection, splits, plan),
    ``fingerprint`` (hashing the inputs), ``prepare+write`` (photos and shards) and
    ``manifest``."""

    manifest: dict[str, Any]
    status: str
    seconds: float
    processed: int
    phases: dict[str, float] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------- inputs

def image_dirs(cfg: ConvertConfig) -> dict[str, str]:
    """Annotation source -> images folder (see :class:`ConvertConfig`)."""
    anns, imgs = cfg.annotations, cfg.images
    if not anns:
        raise ConvertError("--annotations: no annotation file given")
    if len(imgs) not in (0, 1, len(anns)):
        raise ConvertError(f"--images: give one folder for all annotations or one per "
                           f"annotation ({len(anns)}), got {len(imgs)}")
    out = {}
    for i, ann in enumerate(anns):
        if imgs:
            folder = imgs[0] if len(imgs) == 1 else imgs[i]
        elif os.path.isdir(ann):
            folder = ann
        else:
            raise ConvertError(f"--images is required for annotation file {ann}")
        if not os.path.isdir(folder):
            raise ConvertError(f"--images: {folder} is not a folder")
        out[ann] = folder
    return out


def _sha256_bytes(path: str) -> str:
    """sha256 of a file, or ``"missing"`` when it cannot be read (pool task)."""
    try:
        return manifest_lib.sha256_file(path)
    except OSError:
        return "missing"


def _prepare_task(task: tuple[str, int, int]) -> tuple[bytes | None, str | None]:
    """Pool task: (path, size, quality) -> (jpeg, None) or (None, reason)."""
    path, size, quality = task
    try:
        return fundus.prepare_file(path, size, quality), None
    except fundus.FundusError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - an unexpected failure is a listed skip too
        return None, f"unexpected error: {type(e).__name__}: {e}"


def output_flags(cfg: ConvertConfig, fractions: tuple[float, float, float]) -> dict[str, Any]:
    """The flags recorded in the manifest (those that shape the output, and the sources)."""
    return {"annotations": list(cfg.annotations), "images": list(cfg.images),
            "image_size": cfg.image_size, "jpeg_quality": cfg.jpeg_quality,
            "split": list(fractions), "seed": cfg.seed, "folds": cfg.folds,
            "selection": cfg.selection,
            "num_shards": (cfg.num_shards if cfg.num_shards is None
                           or isinstance(cfg.num_shards, int) else list(cfg.num_shards))}


def software() -> dict[str, str]:
    """Versions whose change changes the output bytes."""
    return {"pillow": PIL.__version__, "libjpeg": str(features.version("jpg"))}


def fingerprint(flags: dict[str, Any], source_shas: list[str], image_shas: list[str],
                files: list[str]) -> str:
    """sha256 over what determines the output: output-shaping flags (not paths), the
    annotation files' and photos' contents, the photo names, and :func:`software`."""
    shaping = {k: v for k, v in flags.items() if k not in ("annotations", "images")}
    doc = {"format_version": FORMAT_VERSION, "flags": shaping, "sources": source_shas,
           "images": [[f, s] for f, s in zip(files, image_shas)], "software": software()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- output dir

def _read_doc(path: str) -> dict | None:
    """A JSON file of an earlier run; None when absent or not valid JSON (edited or
    damaged: treated as absent, so the directory is judged by its other files)."""
    try:
        return fileio.read_json(path)
    except ValueError:
        return None


_DOC_RE = re.compile("^(%s|%s)(\\.tmp\\d*)?$" % (re.escape(manifest_lib.MANIFEST_NAME),
                                               re.escape(PROGRESS_NAME)))


def _ours(name: str) -> bool:
    """A file this converter writes: a shard, the manifest, the progress file, or a
    temporary of one of them."""
    return bool(sharding.SHARD_RE.match(name) or _DOC_RE.match(name))


def _clear(output: str) -> None:
    """Delete this converter's files (never anything else) from ``output``."""
    for name in os.listdir(output):
        if _ours(name):
            os.remove(os.path.join(output, name))


def _shard_ok(output: str, entry: dict) -> bool:
    path = os.path.join(output, entry["path"])
    return os.path.isfile(path) and manifest_lib.sha256_file(path) == entry["sha256"]


def _up_to_date(output: str, manifest: dict, fp: str) -> bool:
    if manifest.get("fingerprint") != fp:
        return False
    return all(_shard_ok(output, s) for split in manifest["splits"].values()
               for s in split["shards"])


# ---------------------------------------------------------------------------- running

def process_pool(workers: int):
    """A worker pool, or None to work in-process (one worker)."""
    if workers <= 1:
        return None
    return multiprocessing.get_context("fork").Pool(workers)


def _imap(pool, fn: Callable, tasks: list, chunksize: int) -> Iterator:
    if pool is None:
        return map(fn, tasks)
    return pool.imap(fn, tasks, chunksize=chunksize)


def chunksize(n: int, workers: int) -> int:
    """``imap`` chunk size for ``n`` tasks on ``workers`` processes (1..16)."""
    return max(1, min(16, n // max(1, workers * 16)))


#: Test hook: called with the shard name after each shard is renamed into place.
_after_shard: Callable[[str], None] = lambda name: None  # noqa: E731


def _eye_record(row: pd.Series, jpeg: bytes, size: int) -> schema.EyeRecord:
    return schema.EyeRecord(
        jpeg=jpeg, size=size, filename=str(row["filename"]),
        patient_id=str(row["patient_id"]), age=int(row["age"]),
        sex=schema.SEX_MALE if row["sex"] == "male" else schema.SEX_FEMALE,
        eye=str(row["eye"]), keywords=", ".join(selection_lib.parse_keywords(row["keywords"])),
        normal=bool(row["normal"]), fold=int(row["fold"]))


def _split_summary(table: pd.DataFrame, written: list, folds: int) -> dict[str, Any]:
    part = table.loc[written] if written else table.iloc[0:0]
    entry = {"images": int(len(part)), "patients": int(part["patient_id"].nunique()),
             "male": int((part["sex"] == "male").sum()),
             "female": int((part["sex"] == "female").sum()),
             "normal_images": int(part["normal"].sum()) if len(part) else 0}
    if folds:
        entry["folds"] = {str(k): int((part["fold"] == k).sum()) for k in range(folds)}
    return entry


def load_table(cfg: ConvertConfig) -> tuple[pd.DataFrame, pd.DataFrame, list[str], tuple]:
    """Annotations -> (kept eyes with split/fold/path, selection skips, formats, fractions)."""
    dirs = image_dirs(cfg)
    fractions = splits_lib.parse_fractions(cfg.split if isinstance(cfg.split, str)
                                           else list(cfg.split))
    table = annotations_lib.read_many(list(cfg.annotations))
    formats = list(table.attrs.get("formats") or [table.attrs.get("format")] *
                   len(cfg.annotations))
    kept, skipped = selection_lib.select(table, cfg.selection)
    kept = kept.copy()
    kept["split"] = splits_lib.assign_splits(kept, fractions, cfg.seed)
    kept["fold"] = splits_lib.assign_folds(kept, cfg.folds, cfg.seed)
    kept["path"] = [os.path.join(dirs[s], f) for s, f in zip(kept["source"], kept["filename"])]
    return kept, skipped, formats, fractions


def convert_with_status(cfg: ConvertConfig) -> Result:
    """Run a conversion (see the module doc). Raises :class:`ConvertError` for bad flags
    or a refused output directory, ``AnnotationError`` for unusable annotation files."""
    t0 = time.monotonic()
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConvertError(f"--image_size={cfg.image_size}: must be >= {MIN_IMAGE_SIZE}")
    if not 1 <= cfg.jpeg_quality <= 100:
        raise ConvertError(f"--jpeg_quality={cfg.jpeg_quality}: must be 1..100")
    if not cfg.output:
        raise ConvertError("--output: no output directory given")
    if cfg.num_shards is not None:
        counts = [cfg.num_shards] if isinstance(cfg.num_shards, int) else list(cfg.num_shards)
        if len(counts) not in (1, 3) or any(int(c) < 1 for c in counts):
            raise ConvertError(f"--num_shards={cfg.num_shards}: one count >= 1, or three "
                               f"(train,val,test)")
    workers = int(cfg.workers or os.cpu_count() or 1)
    if workers < 1:
        raise ConvertError(f"--workers={cfg.workers}: must be >= 1")
    try:
        kept, sel_skipped, formats, fractions = load_table(cfg)
    except ValueError as e:
        if isinstance(e, annotations_lib.AnnotationError):
            raise
        raise ConvertError(str(e)) from e
    shards = sharding.plan(kept, cfg.seed, cfg.num_shards, cfg.image_size, cfg.jpeg_quality)
    phases = {"read": time.monotonic() - t0}
    order = [sh for split in manifest_lib.SPLITS for sh in shards[split]]
    flags = output_flags(cfg, fractions)
    dirs = image_dirs(cfg)

    if os.path.exists(cfg.output) and not os.path.isdir(cfg.output):
        raise ConvertError(f"--output={cfg.output}: exists and is not a folder")
    pool = process_pool(workers)      # forked before the lock: workers never hold it
    try:
        # one conversion per output dir at a time: a second one refuses (LockedError)
        with lock_lib.DirLock(cfg.output, "fundus-convert", "--output"):
            result = _convert_locked(cfg, t0, phases, pool, workers, kept, sel_skipped,
                                     formats, fractions, shards, order, flags, dirs)
    except BaseException:
        if pool is not None:          # a failed write (disk full), Ctrl-C: stop the
            pool.terminate()          # workers now, not after every queued photo
            pool.join()
        raise
    if pool is not None:
        pool.close()
        pool.join()
    return result


def _convert_locked(cfg: ConvertConfig, t0: float, phases: dict[str, float], pool,
                    workers: int, kept: pd.DataFrame, sel_skipped: pd.DataFrame,
                    formats: list[str], fractions: tuple, shards: dict, order: list,
                    flags: dict, dirs: dict[str, str]) -> Result:
    """:func:`convert_with_status` after the table and the plan, with the output dir
    locked: fingerprint, up-to-date / resume check, the shards, the manifest."""
    source_shas = [manifest_lib.sha256_file(a) if os.path.isfile(a) else "folder"
                   for a in cfg.annotations]
    files = [kept.at[i, "path"] for sh in order for i in sh.rows]
    rel = [f"{kept.at[i, 'split']}/{kept.at[i, 'patient_id']}/{kept.at[i, 'eye']}/"
           f"{kept.at[i, 'filename']}" for sh in order for i in sh.rows]
    shas = list(_imap(pool, _sha256_bytes, files, chunksize(len(files), workers)))
    fp = fingerprint(flags, source_shas, shas, rel)
    phases["fingerprint"] = time.monotonic() - t0 - sum(phases.values())
    state, payload = _prepare_output(cfg, fp)
    if state == "up to date":
        return Result(payload, "up to date", time.monotonic() - t0, 0, phases)
    completed: dict[str, dict] = payload
    status = "resumed" if completed else "converted"
    progress_path = os.path.join(cfg.output, PROGRESS_NAME)
    progress_doc = {"fingerprint": fp, "completed": completed}
    fileio.write_text(progress_path, manifest_lib.dumps(progress_doc))

    todo = [sh for sh in order if sh.name not in completed]
    tasks = [(kept.at[i, "path"], cfg.image_size, cfg.jpeg_quality)
             for sh in todo for i in sh.rows]
    bar = progress_lib.Progress("fundus-convert", "photos", len(tasks), cfg.progress)
    results = _imap(pool, _prepare_task, tasks, chunksize(len(tasks), workers))
    n_done = n_skip = 0

    def write_shard(sh: sharding.Shard, written: list, skipped: list, tmp: str) -> None:
        nonlocal n_done, n_skip
        with tf.io.TFRecordWriter(tmp) as w:
            for i in sh.rows:
                jpeg, reason = next(results)
                n_done += 1
                if jpeg is None:
                    n_skip += 1
                    skipped.append(_skip_entry(kept.loc[i], reason))
                else:
                    w.write(schema.encode_example(
                        _eye_record(kept.loc[i], jpeg, cfg.image_size)))
                    written.append(i)
                bar.update(n_done, skipped=n_skip)

    for sh in todo:
        final = os.path.join(cfg.output, sh.name)
        written, skipped = [], []
        fileio.write_atomic(final, functools.partial(write_shard, sh, written, skipped))
        completed[sh.name] = {"records": len(written), "written": [_key(kept, i)
                                                                 for i in written],
                              "sha256": manifest_lib.sha256_file(final),
                              "bytes": os.path.getsize(final), "skipped": skipped}
        fileio.write_text(progress_path, manifest_lib.dumps(progress_doc))
        _after_shard(sh.name)
    bar.close()

    phases["prepare+write"] = time.monotonic() - t0 - sum(phases.values())
    manifest = _build_manifest(cfg, kept, sel_skipped, shards, completed, flags, formats,
                               source_shas, dirs, fp)
    manifest_lib.save(cfg.output, manifest)
    os.remove(progress_path)
    phases["manifest"] = time.monotonic() - t0 - sum(phases.values())
    return Result(manifest, status, time.monotonic() - t0, len(tasks), phases)


def _key(table: pd.DataFrame, i) -> str:
    return f"{table.at[i, 'patient_id']}/{table.at[i, 'eye']}"


def _skip_entry(row: pd.Series, reason: str) -> dict[str, Any]:
    return {"file": str(row["path"]), "patient_id": str(row["patient_id"]),
            "eye": str(row["eye"]), "split": str(row["split"]), "reason": reason}


def _prepare_output(cfg: ConvertConfig, fp: str) -> tuple[str, dict]:
    """Check (and, where allowed, clear) the output directory.

    Returns ``("up to date", manifest)`` for a finished conversion of the same inputs and
    flags, else ``("go", completed)``: the shards (name -> progress entry) that a killed
    run of the same inputs completed and that still match their sha256 (possibly none).
    Raises :class:`ConvertError` for a directory made from something else, unless
    ``cfg.overwrite``."""
    out = cfg.output
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConvertError(f"--output={out}: exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    names = sorted(n for n in os.listdir(out) if n != lock_lib.LOCK_NAME)
    man_path = manifest_lib.manifest_path(out)
    prog_path = os.path.join(out, PROGRESS_NAME)
    prog = _read_doc(prog_path)
    manifest = _read_doc(man_path)
    if manifest is not None and manifest.get("fingerprint") == fp and "splits" in manifest:
        if _up_to_date(out, manifest, fp):
            if prog is not None:  # killed between saving the manifest and cleaning up
                os.remove(prog_path)
            return "up to date", manifest
        _clear(out)  # damaged output of the same inputs: rebuilt
        return "go", {}
    theirs = None
    if manifest is not None and prog is None:
        theirs = "was made from other inputs or flags"
    elif prog is not None and prog.get("fingerprint") != fp:
        theirs = "holds an unfinished conversion of other inputs or flags"
    elif prog is None and names:
        theirs = ("holds converter files without a manifest" if any(map(_ours, names))
                  else "is not empty and is not a fundus-convert output directory")
    if theirs:
        if not cfg.overwrite:
            raise ConvertError(f"--output={out} {theirs}; pass --overwrite to replace it "
                               f"(only the converter's own files are deleted)")
        _clear(out)
        return "go", {}
    completed = {}
    for name, entry in ((prog or {}).get("completed") or {}).items():
        if _shard_ok(out, {"path": name, "sha256": entry.get("sha256")}):
            completed[name] = entry
    for name in names:  # partial shards, temporaries, a stale manifest
        if _ours(name) and name not in completed and name != PROGRESS_NAME:
            os.remove(os.path.join(out, name))
    return "go", completed


def _build_manifest(cfg, kept, sel_skipped, shards, completed, flags, formats, source_shas,
                    dirs, fp) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    image_skips: list[dict] = []
    by_key = {_key(kept, i): i for i in kept.index}
    for split in manifest_lib.SPLITS:
        written, entries = [], []
        for sh in shards[split]:
            c = completed[sh.name]
            written += [by_key[k] for k in c["written"]]
            image_skips += c["skipped"]
            size = c.get("bytes")        # progress files of earlier versions lack it
            if size is None:
                size = os.path.getsize(os.path.join(cfg.output, sh.name))
            entries.append({"path": sh.name, "records": c["records"], "sha256": c["sha256"],
                            "bytes": int(size)})
        entry = _split_summary(kept, written, cfg.folds)
        entry["skipped"] = sum(len(completed[sh.name]["skipped"]) for sh in shards[split])
        entry["shards"] = entries
        splits[split] = entry
    sel = [{"file": str(r["filename"]), "patient_id": str(r["patient_id"]),
            "eye": str(r["eye"]), "source": str(r["source"]), "row": int(r["row"]),
            "reason": str(r["reason"])} for _, r in sel_skipped.iterrows()]
    sources = [{"annotations": a, "sha256": s, "format": f, "images": dirs[a]}
               for a, s, f in zip(cfg.annotations, source_shas, formats)]
    return {"format_version": FORMAT_VERSION, "image_size": cfg.image_size,
            "folds": cfg.folds, "selection": cfg.selection, "splits": splits,
            "flags": flags, "sources": sources, "skipped": sel + image_skips,
            "fingerprint": fp, "software": software()}


def convert(cfg: ConvertConfig) -> dict[str, Any]:
    """Run a conversion and return its manifest (see :func:`convert_with_status`)."""
    return convert_with_status(cfg).manifest
