"""Job start-up: TensorFlow's start-up noise is filtered, real stderr lines survive."""
import os

from tools import _common


def test_filtered_stderr_drops_noise_keeps_errors(capfd):
    def emit():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\n")
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see\n")
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        os.write(2, b"ValueError: a real problem the user must see\n")

    _common._filtered_stderr(emit)
    err = capfd.readouterr().err
    assert "a real problem the user must see" in err
    assert "InitializeLog" not in err and "oneDNN" not in err and "cuInit" not in err


def test_job_import_prints_no_tensorflow_noise():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import tools._common"],
                         capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "", out.stderr
