"""Atomic file writes and JSON reads: every JSON/CSV/bytes/PNG output of the project is
written here, and every JSON file it reads back is read here.

A file is written under a temporary name in its own directory and renamed over the target
when complete (``os.replace``, atomic on POSIX), so a killed job leaves either the old file
or the new one, never half of one; the temporary is removed when the write fails.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any, Callable


def write_atomic(path: str, write: Callable[[str], None], suffix: str = "") -> str:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path``. Returns ``path``.

    ``suffix``: an ending of ``path`` the temporary name keeps (writers that insist on
    an extension: ``".keras"`` gives ``best.tmp<pid>.keras`` for ``best.keras``)."""
    if suffix and not path.endswith(suffix):
        raise ValueError(f"{path}: does not end with {suffix!r}")
    stem = path[: len(path) - len(suffix)]
    tmp = f"{stem}.tmp{os.getpid()}{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Atomic binary write."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    return write_atomic(path, write)


def write_text(path: str, text: str) -> str:
    """Atomic UTF-8 text write."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomic(path, write)


def write_json(path: str, obj: Any, *, sort_keys: bool = True, allow_nan: bool = True,
               default: Callable[[Any], Any] | None = None) -> str:
    """Atomic JSON write: ``indent=2``, a final newline. ``allow_nan=False`` raises on
    NaN/inf (strict JSON); ``default`` converts what json cannot (numpy scalars, ...)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys,
                                       allow_nan=allow_nan, default=default) + "\n")


def read_json(path: str, missing: Any = None) -> Any:
    """The JSON document at ``path``; ``missing`` when the file does not exist.

    Raises ``ValueError`` naming the file when it exists but is not valid JSON (a file
    written through :func:`write_json` is never half-written, so this means it was edited
    or written by something else)."""
    if not os.path.exists(path):
        return missing
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def write_dir_atomic(path: str, write: Callable[[str], None]) -> str:
    """Call ``write(tmp_dir)`` on a fresh directory beside ``path``, then put it in
    ``path``'s place (an existing ``path`` is removed only after ``write`` succeeded;
    the swap itself is two renames, so a kill between them leaves ``path.old<pid>``
    beside a missing ``path``, never a half-written ``path``). Returns ``path``."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{path.rstrip(os.sep)}.tmp{os.getpid()}"
    old = f"{path.rstrip(os.sep)}.old{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.exists(old) and not os.path.exists(path):
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return path


#: errno values of a full disk, an exceeded quota and an exceeded file size limit.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large",
                  "file too large")


def out_of_space(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) is a write that failed for lack
    of space: an ``OSError`` with one of :data:`NO_SPACE_ERRNOS`, or an error of a library
    that writes through its own C code (TensorFlow's ``TFRecordWriter``, HDF5) whose text
    carries the system's message."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return True
        if any(t in str(e) for t in _NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False
