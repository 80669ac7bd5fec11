"""The jobs' shared machinery (tools/_common.py): TensorFlow's start-up noise is filtered
and real stderr lines survive; every job follows the one job pattern and exit-status
contract."""
import ast
import os
import subprocess
import sys
import tomllib

import pytest
from absl import app

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
    out = subprocess.run([sys.executable, "-c", "import tools._common"],
                         capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "", out.stderr


# ----------------------------------------------------------------------------- the job pattern
# Every job follows one pattern (docs/design.md, "tools/"): a module docstring with usage
# and an "Exit status" line; flags defined at module level; ``def main(argv) -> int``;
# ``run = _common.entry(main, ...)``; exit 2 with one ``fundus-<job>: error: ...`` line and
# no traceback for bad flags or input, before anything is written.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = ("convert", "synth", "bench", "train", "tune", "demo", "evaluate", "predict",
        "export", "explain", "gpu_check", "probe")


def command(job: str) -> str:
    """The console script of a job module (``gpu_check`` -> ``fundus-gpu-check``)."""
    return "fundus-" + job.replace("_", "-")


def test_every_job_is_a_console_script_and_every_script_a_job():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {command(j): f"tools.{j}:run" for j in JOBS}
    files = {n[:-3] for n in os.listdir(os.path.join(ROOT, "tools"))
             if n.endswith(".py") and not n.startswith("_")}
    assert files == set(JOBS)


@pytest.mark.parametrize("job", JOBS)
def test_job_module_follows_the_pattern(job):
    path = os.path.join(ROOT, "tools", f"{job}.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    doc = ast.get_docstring(tree) or ""
    assert doc.startswith(f"{command(job)}:") and "Exit status:" in doc, job
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1 and len(mains[0].args.args) == 1, job
    assert ast.unparse(mains[0].returns) == "int", job
    runs = [n for n in tree.body if isinstance(n, ast.Assign)
            and [ast.unparse(t) for t in n.targets] == ["run"]]
    assert len(runs) == 1 and ast.unparse(runs[0].value).startswith("_common.entry(main"), job
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):       # flags and imports at module level only
            assert not isinstance(node, (ast.Import, ast.ImportFrom)), (job, fn.name)
            if isinstance(node, ast.Call):
                assert "DEFINE" not in ast.unparse(node.func), (job, fn.name)


def _bad_invocation(job: str, tmp) -> list[str]:
    """One invocation per job with a bad flag or input, and the text its message names."""
    missing = str(tmp / "missing")
    return {
        "convert": [f"--annotations={missing}.csv", f"--output={tmp / 'out'}"],
        "synth": [f"--output={tmp / 'out'}", "--min_width=500", "--max_width=100"],
        "bench": [f"--data={missing}", f"--output={tmp / 'out'}"],
        "train": [f"--data={missing}", f"--model_dir={tmp / 'out'}"],
        "tune": [f"--data={missing}", f"--directory={tmp / 'out'}",
                 "--range=learning_rate=1e-4..1e-3:log"],
        "demo": [f"--workdir={tmp / 'out'}", "--patients=10"],
        "evaluate": [f"--model={missing}", f"--data={missing}", f"--output={tmp / 'out'}"],
        "predict": [f"--model={missing}", f"--output={tmp / 'out'}", "photo.jpg"],
        "export": [f"--model={missing}", f"--output={tmp / 'out'}"],
        "explain": [f"--model={missing}", f"--output={tmp / 'out'}"],
        "gpu_check": ["--cpu_smoke", f"--data={missing}", f"--output={tmp / 'out'}"],
        "probe": [f"--data={missing}", f"--output={tmp / 'out'}"],
    }[job]


NAMED = {"convert": "--images", "synth": "--min_width=500", "bench": "missing",
         "train": "--data=", "tune": "--data=", "demo": "--patients", "evaluate": "missing",
         "predict": "missing", "export": "missing", "explain": "missing",
         "gpu_check": "missing", "probe": "--data="}


@pytest.mark.parametrize("job", JOBS)
def test_bad_flag_or_input_exits_2_with_one_line(job, tmp_path):
    out = subprocess.run([sys.executable, "-m", f"tools.{job}", *_bad_invocation(job, tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith(f"{command(job)}:")]
    assert len(errors) == 1 and errors[0].startswith(f"{command(job)}: error: "), out.stderr
    assert NAMED[job] in errors[0], errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()          # nothing written


def test_call_maps_exceptions_to_exit_status(capsys):
    def main(argv):
        kind = argv[1]
        if kind == "input":
            with _common.checking_inputs():
                raise FileNotFoundError("--data=x: no manifest.json")
        if kind == "usage":
            raise app.UsageError("unexpected arguments: y")
        if kind == "run":
            raise _common.RunError("the export disagrees")
        if kind == "bug":
            raise ZeroDivisionError("division by zero")
        if kind == "late":
            raise ValueError("a value went wrong while running")
        return 0

    assert _common.call(main, ["x", "ok"], name="fundus-x") == 0
    want = {"input": (2, "fundus-x: error: --data=x: no manifest.json"),
            "usage": (2, "fundus-x: error: unexpected arguments: y"),
            "run": (1, "fundus-x: error: the export disagrees"),
            "bug": (1, "fundus-x: error: ZeroDivisionError: division by zero"),
            "late": (1, "fundus-x: error: ValueError: a value went wrong while running")}
    for kind, (status, line) in want.items():
        assert _common.call(main, ["x", kind], name="fundus-x") == status, kind
        assert capsys.readouterr().err.strip() == line
    # a job's own input-error family is bad input wherever it is raised
    assert _common.call(main, ["x", "late"], name="fundus-x", input_errors=(ValueError,)) == 2
