"""A damaged record met while reading a data dir: one message naming the shard.

TensorFlow reports a damaged shard as ``tf.errors.DataLossError`` (a record's crc does not
match: a flipped or truncated byte) or, for a JPEG that no longer decodes,
``tf.errors.InvalidArgumentError`` (only one whose message is about decoding an image is
considered), from deep inside ``model.fit`` or a prediction loop,
with a message that rarely names the file. :func:`reading` turns such an error into a
:class:`DataError` that names the shard (the one the error names, else the ones whose
sha256 no longer matches the manifest, :func:`pipeline.manifest.verify_shards`) and the
fix. An ``InvalidArgumentError`` while every shard matches its manifest is not a data
problem and passes through unchanged; so does a ``DataLossError`` of another file (a
``--cache_dir`` file, say).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
from typing import Callable, Iterable, Iterator

import tensorflow as tf

from pipeline import manifest as manifest_lib

#: TensorFlow's errors for unreadable records and undecodable images.
READ_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)


# an InvalidArgumentError that can come from a damaged image (anything else is a bug or a
# bad flag: passed through without re-hashing every shard)
_DECODE = re.compile(r"jpe?g|decod|image|corrupt|truncat|premature", re.IGNORECASE)
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$")


def short_message(error: BaseException) -> str:
    """A TensorFlow error's first line without its op and function-node decorations
    (``corrupted record at 37175``)."""
    lines = str(error).strip().splitlines()
    text = _TF_NOISE.sub("", lines[0]).strip() if lines else ""
    return text or type(error).__name__


class DataError(RuntimeError):
    """A damaged shard found while the job ran (exit 1): the message names it and the fix."""


def damaged_shards(data_dir: str, error: BaseException,
                   splits: Iterable[str] | None = None) -> list[str]:
    """Shard paths (relative, as in the manifest) to blame for ``error``: those named in
    its message, else those of ``splits`` (default: all) whose bytes, size or record
    count no longer match the manifest (every shard is re-hashed)."""
    manifest = manifest_lib.load(data_dir)
    splits = list(splits) if splits is not None else None
    text = str(error)
    named = []
    for split in (splits if splits is not None else list(manifest["splits"])):
        for entry in manifest["splits"].get(split, {}).get("shards", []):
            if entry["path"] in text or os.path.join(data_dir, entry["path"]) in text:
                named.append(entry["path"])
    if named:
        return named
    return [r.path for r in manifest_lib.verify_shards(data_dir, splits, manifest)
            if not r.ok]


def as_data_error(data_dir: str, error: BaseException,
                  splits: Iterable[str] | None = None) -> DataError | None:
    """The :class:`DataError` for a TensorFlow read error, or None when no shard of
    ``data_dir`` is to blame (see the module doc). An ``InvalidArgumentError`` whose
    message is not about decoding an image is never blamed on the data (no re-hash)."""
    if not isinstance(error, tf.errors.DataLossError) and not _DECODE.search(str(error)):
        return None
    bad = damaged_shards(data_dir, error, splits)
    if not bad:
        return None
    paths = ", ".join(os.path.join(data_dir, p) for p in bad)
    return DataError(f"damaged shard{'s' if len(bad) > 1 else ''} {paths} "
                     f"({type(error).__name__}: {short_message(error)}); "
                     f"{manifest_lib.fix_hint(data_dir)}")


@contextlib.contextmanager
def reading(data_dir: str, splits: Iterable[str] | None = None) -> Iterator[None]:
    """Turn a TensorFlow read error raised inside into a :class:`DataError` naming the
    damaged shard of ``data_dir`` (``splits``: the ones read; default all)."""
    try:
        yield
    except READ_ERRORS as e:
        data_error = as_data_error(data_dir, e, splits)
        if data_error is None:
            raise
        raise data_error from e


def reads_data(param: str = "data_dir") -> Callable[[Callable], Callable]:
    """Decorator: run the function inside :func:`reading` on the data dir passed as its
    argument ``param`` (all splits)."""
    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            data_dir = signature.bind(*args, **kwargs).arguments.get(param)
            if not data_dir:
                return fn(*args, **kwargs)
            with reading(data_dir):
                return fn(*args, **kwargs)
        return run
    return wrap
