"""Shared helpers for the absl jobs: quiet logs and the console-script entry point."""
from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ and Python start-up chatter out of users' logs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: F401  (import after the env var is set)
    tf.get_logger().setLevel("ERROR")


def entry(main: Callable[[list[str]], int | None]) -> Callable[[], None]:
    """Make a console-script entry point ``run()`` from an absl ``main(argv)``."""
    def run() -> None:
        from absl import app
        app.run(main, argv=sys.argv)
    return run
