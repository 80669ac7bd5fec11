"""Shared helpers for the absl jobs: quiet TensorFlow start-up and the console entry point.

Importing this module first (every job does) imports TensorFlow with its start-up noise
filtered: TF 2.21 logs through absl's C++ logger before ``TF_CPP_MIN_LOG_LEVEL`` applies
("All log messages before absl::InitializeLog()", oneDNN and CUDA-stub notices, a
``cuInit`` error on machines without a GPU). The C-level stderr is captured while
TensorFlow imports and enumerates devices; lines matching :data:`NOISE` are dropped and
every other line is written back to stderr, so real errors still reach the user.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Callable

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
        import tensorflow as tf  # noqa: PLC0415
        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices("GPU")

    _filtered_stderr(_import)
    quiet_tensorflow._done = True  # type: ignore[attr-defined]


def entry(main: Callable[[list[str]], int | None]) -> Callable[[], None]:
    """Make a console-script entry point ``run()`` from an absl ``main(argv)``."""
    def run() -> None:
        from absl import app
        # TensorFlow's SavedModel code logs INFO lines through absl ("Writing
        # fingerprint ..."); jobs show warnings and up unless the user's own
        # --verbosity (parsed later, so it wins) says otherwise.
        app.run(main, argv=sys.argv[:1] + ["--verbosity=-1"] + sys.argv[1:])
    return run


quiet_tensorflow()
