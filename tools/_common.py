"""Shared machinery of the absl jobs (``tools/<job>.py``): a quiet TensorFlow start-up, the
console entry point and the exit-status contract every job follows.

Importing this module first (every job does) imports TensorFlow with its start-up noise
filtered: TF 2.21 logs through absl's C++ logger before ``TF_CPP_MIN_LOG_LEVEL`` applies
("All log messages before absl::InitializeLog()", oneDNN and CUDA-stub notices, a
``cuInit`` error on machines without a GPU). The C-level stderr is captured while
TensorFlow imports and enumerates devices; lines matching :data:`NOISE` are dropped and
every other line is written back to stderr, so real errors still reach the user.

Exit status of every job (``run = entry(main)``; see docs/design.md, "tools/"):

* 0: done (``main`` returned 0 or None);
* 2: bad flags or input, found before the work starts. Raised as absl flag errors
  (unknown flag, bad value, missing required flag: at parse time), ``app.UsageError``,
  :class:`InputError`, any exception type the job lists in ``entry(main,
  input_errors=...)`` or in :data:`ALWAYS_INPUT` (a damaged data dir's
  ``ShardError``), or one of :data:`INPUT_ERRORS` (``ValueError``,
  ``FileNotFoundError``, ...) raised inside a ``with checking_inputs():`` block (the
  job's start-up validation). One line on stderr, ``fundus-<job>: error: <message>``,
  where the message names the flag, file or row and the fix; no traceback;
* 1: a failure during the run: :class:`RunError` or any other exception, one line
  ``fundus-<job>: error: <message>`` (the exception type is named unless it is a
  ``RunError``; ``--verbosity=1`` adds the traceback; e.g. fundus-export's 1e-4 check,
  fundus-convert with nothing converted); or ``main`` returned 1.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import traceback
from typing import Callable, Iterator

from absl import app, flags, logging

from pipeline import manifest as manifest_lib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"cudart_stub\.cc|cuda_platform\.cc.*cuInit|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning|"
    r"This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler|"
    r"cuda_executor\.cc.*NUMA node|Could not find cuda drivers")


def _filtered_stderr(fn: Callable[[], None]) -> None:
    """Run ``fn`` with fd 2 captured; re-emit captured lines that are not :data:`NOISE`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as cap:
        os.dup2(cap.fileno(), 2)
        try:
            fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            cap.seek(0)
            for line in cap.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not NOISE.search(line):
                    print(line, file=sys.stderr)


def quiet_tensorflow() -> None:
    """Import TensorFlow (once) and enumerate devices with start-up noise filtered."""
    if "tensorflow" in sys.modules and getattr(quiet_tensorflow, "_done", False):
        return

    def _import() -> None:
        # imported here, not at module level: the import itself is what is filtered
        import tensorflow as tf  # noqa: PLC0415
        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices("GPU")

    _filtered_stderr(_import)
    quiet_tensorflow._done = True  # type: ignore[attr-defined]


class InputError(Exception):
    """Bad flags or input: the job exits 2 with this message, which names the flag, file
    or row and says how to fix it."""


class RunError(Exception):
    """A failure during the run, with a message meant for the user: the job exits 1."""


#: Exception types that mean "bad input" when raised inside :func:`checking_inputs`
#: (a job's start-up validation); raised later they are run-time failures (exit 1).
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
    IsADirectoryError, PermissionError)


#: Bad input wherever a library raises it, in every job: shards missing or not the size
#: their manifest records (found by the start-up check of training and evaluation).
ALWAYS_INPUT: tuple[type[BaseException], ...] = (manifest_lib.ShardError,)


def message(e: BaseException) -> str:
    """The user-facing text of an exception (a ``KeyError``'s without the quotes)."""
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e) or type(e).__name__


@contextlib.contextmanager
def checking_inputs(*extra: type[BaseException]) -> Iterator[None]:
    """Start-up validation: an :data:`INPUT_ERRORS` (or ``extra``) exception raised inside
    becomes :class:`InputError` (exit 2). Put every check that can fail on bad flags or
    inputs here, before the job writes anything."""
    try:
        yield
    except InputError:
        raise
    except (*INPUT_ERRORS, *extra) as e:
        raise InputError(message(e)) from e


def job_name(main: Callable) -> str:
    """``fundus-<job>`` for a job's ``main`` (also when run as ``python -m tools.<job>``;
    ``_`` in the module name is ``-`` in the command: ``tools/gpu_check.py`` is
    ``fundus-gpu-check``)."""
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    module = spec.name if spec is not None and spec.name else main.__module__
    return "fundus-" + module.rsplit(".", 1)[-1].replace("_", "-")


def error(name: str, text: str) -> None:
    """Print ``<name>: error: <text>`` on stderr."""
    sys.stdout.flush()
    print(f"{name}: error: {text}", file=sys.stderr, flush=True)


def call(main: Callable[[list[str]], int | None], argv: list[str], *,
         input_errors: tuple[type[BaseException], ...] = (), name: str | None = None) -> int:
    """Run ``main(argv)`` (flags already parsed) and return its exit status, mapping
    exceptions as the module doc says. Tests use it to run a job's ``main`` in-process."""
    name = name or job_name(main)
    try:
        status = main(argv)
    except (InputError, app.UsageError, flags.Error, *ALWAYS_INPUT, *input_errors) as e:
        error(name, message(e))
        return 2
    except RunError as e:
        error(name, message(e))
        return 1
    except Exception as e:  # noqa: BLE001 - every run-time failure: one line, exit 1
        if logging.level_debug():
            traceback.print_exc()
        error(name, f"{type(e).__name__}: {message(e)}")
        return 1
    return 0 if status is None else int(status)


def entry(main: Callable[[list[str]], int | None], *,
          input_errors: tuple[type[BaseException], ...] = ()) -> Callable[[], None]:
    """Make a job's console-script entry point ``run()`` from its ``main(argv)``.

    ``input_errors``: exception types that mean bad input wherever they are raised
    (e.g. a refused output directory found during the run). Flag-parsing errors exit 2
    with one line, as do the exceptions of :func:`call`. ``run.call(argv)`` runs ``main``
    in-process on already parsed flags and returns the exit status (for tests)."""
    def parse(args: list[str]) -> list[str]:
        try:
            return flags.FLAGS(args)
        except flags.Error as e:
            error(job_name(main), f"{e} (--helpshort lists the flags)")
            sys.exit(2)

    def run() -> None:
        # TensorFlow's SavedModel code logs INFO lines through absl ("Writing
        # fingerprint ..."); jobs show warnings and up unless the user's own
        # --verbosity (parsed later, so it wins) says otherwise.
        app.run(lambda argv: call(main, argv, input_errors=input_errors),
                argv=sys.argv[:1] + ["--verbosity=-1"] + sys.argv[1:], flags_parser=parse)

    run.call = (  # type: ignore[attr-defined]
        lambda argv: call(main, argv, input_errors=input_errors))
    return run


quiet_tensorflow()
