"""One writer per output directory: an advisory lock held for a whole job run.

``fundus-convert`` (on ``--output``) and ``fundus-train`` (on ``--model_dir``) hold a
:class:`DirLock` while they write, so a second run started on the same directory refuses at
once (:class:`LockedError`, naming the directory and the holder's pid) instead of
interleaving its files with the first run's.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``DIR/.fundus.lock``, whose text is the
holder's pid and job name. The kernel drops a flock when its holder exits, crashes or is
killed (SIGKILL included), so a dead run never leaves the directory locked; the file left
behind by a killed run is simply locked again by the next one. A clean release deletes the
file (and the directory, when the lock created it and nothing else was written there).
Local file systems only: ``flock`` on NFS may not exclude processes on other machines.
"""
from __future__ import annotations

import fcntl
import os

LOCK_NAME = ".fundus.lock"


class LockedError(RuntimeError):
    """The directory is held by another running job (the message names it and its pid)."""


def lock_path(directory: str) -> str:
    """``directory/.fundus.lock``."""
    return os.path.join(directory, LOCK_NAME)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 256).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def holder(directory: str) -> str | None:
    """The holder of ``directory``'s lock (``"pid N (job)"``, ``""`` when it has not
    written itself yet), or None when nobody holds it. Never creates anything."""
    try:
        fd = os.open(lock_path(directory), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DirLock:
    """Exclusive lock on a directory for one job run (a context manager).

    ``DirLock(directory, job)``: ``acquire()`` (or ``with``) creates ``directory`` when
    missing, then takes the lock or raises :class:`LockedError`::

        --output=DATA is in use by another run: pid 4242 (fundus-convert); wait for it
        to finish (or stop it), or use another directory

    ``release()`` (also on an exception) deletes the lock file, and the directory when
    the lock created it and it is empty. ``flag`` names the directory in messages
    (``"--output"``, ``"--model_dir"``).
    """

    def __init__(self, directory: str, job: str, flag: str | None = None):
        self.directory = directory
        self.job = job
        self.flag = flag
        self._fd: int | None = None
        self._created = False

    @property
    def name(self) -> str:
        return f"{self.flag}={self.directory}" if self.flag else self.directory

    def acquire(self) -> "DirLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.name}: lock already held by this object")
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise NotADirectoryError(f"{self.name}: exists and is not a folder")
        self._created = not os.path.exists(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        path = lock_path(self.directory)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _read_holder(fd) or "a process that has not written its pid yet"
                os.close(fd)
                self._forget_created()
                raise LockedError(
                    f"{self.name} is in use by another run: {who}; wait for it to finish "
                    f"(or stop it), or use another directory") from None
            # the holder we waited on may have deleted the file as it released it: lock
            # the file that is there now, not an unlinked one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({self.job})\n".encode())
        self._fd = fd
        return self

    def _forget_created(self) -> None:
        if self._created:
            try:
                os.rmdir(self.directory)
            except OSError:
                pass
            self._created = False

    def release(self) -> None:
        """Delete the lock file and unlock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.remove(lock_path(self.directory))
        except OSError:
            pass
        os.close(self._fd)            # the flock goes with the last descriptor
        self._fd = None
        self._forget_created()

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
