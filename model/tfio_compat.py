"""Import tensorflow-io's pure-TF parts on TF 2.21 without its loader warnings.

tensorflow-io 0.37.1's compiled ops and file-system plugins are built against TF 2.16 and
fail to load on TF 2.21 (undefined symbols). Its ``experimental.filter`` and
``experimental.color`` modules are plain TF ops and work; importing the package still
prints two ``UserWarning``s about the plugins, which we silence here, once. See
BUILD_NOTES.md.
"""
from __future__ import annotations

import functools
import warnings


@functools.lru_cache(maxsize=1)
def tfio():
    """Return the ``tensorflow_io`` module with its plugin warnings suppressed (imported on
    the first call, then cached)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*(plugins are not loaded|unable to load libtensorflow_io).*")
        warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow_io.*")
        # stays here: only --augment_local_contrast needs tensorflow-io, whose import is
        # fragile on TF 2.21 (BUILD_NOTES.md); at module level every model load would need it
        import tensorflow_io  # noqa: PLC0415
    return tensorflow_io
