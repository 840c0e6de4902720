"""
The pytest plugin of the notebook's judge (helper.instructor.grade_notebook),
loaded with `-p helper.instructor.grade_plugin` in the process that runs
`pytest --nbval` on a handed-in notebook. That process is the grader's own:
only the notebook's kernel runs the submission's code, in the sandbox.

- It starts the kernel in the sandbox ($GRADE_KERNEL: the sandbox's
  settings), connected through Unix sockets in a folder both can reach (the
  sandbox has no network, so no TCP).
- It streams each cell's outcome to the file $GRADE_EVENTS (one JSON object a
  line, flushed at once: {"event": "report", "nodeid", "outcome", "message"}),
  so that the grader knows how far the notebook got when the run is stopped.
- It stops a cell that runs longer than $GRADE_TEST_TIMEOUT seconds (nbval's
  own cell timeout comes first), and ignores stderr outputs (warnings of a
  library are not the student's).
"""
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest

KERNEL_ENV = "GRADE_KERNEL"
MAX_MESSAGE = 1500

_stream = None


@dataclass
class CellRun:
    """One cell's outcome in the notebook's run."""

    nodeid: str
    outcome: str  # passed, failed, skipped, error, not run
    message: str = ""


def _emit(record: dict) -> None:
    if _stream is not None:
        _stream.write(json.dumps(record) + "\n")
        _stream.flush()


def pytest_configure(config):
    global _stream
    path = os.environ.get("GRADE_EVENTS")
    if path:
        _stream = open(path, "a", encoding="utf-8")
    if config.pluginmanager.hasplugin("nbval"):
        _ignore_stderr_in_nbval()
        settings = os.environ.get(KERNEL_ENV)
        if settings:
            _kernel_in_sandbox(json.loads(settings))


def _ignore_stderr_in_nbval() -> None:
    """Make nbval compare cell outputs without their stderr streams."""
    from nbval.plugin import IPyNbCell

    compare = IPyNbCell.compare_outputs

    def without_stderr(outputs):
        return [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]

    def compare_outputs(self, test, ref, skip_compare=None):
        return compare(self, without_stderr(test), without_stderr(ref), skip_compare)

    IPyNbCell.compare_outputs = compare_outputs


def _kernel_in_sandbox(settings: dict) -> None:
    """Make nbval start its kernels in the sandbox, over Unix sockets."""
    import nbval.kernel
    from jupyter_client.manager import KernelManager

    from helper.grading.sandbox import Limits, bwrap_command

    folder, sockets, connection = Path(settings["folder"]), Path(settings["sockets"]), Path(settings["connection"])
    limits = Limits(seconds=settings["seconds"], memory_bytes=settings["memory_bytes"])

    class SandboxedKernelManager(KernelManager):
        def __init__(self, **kwargs):
            super().__init__(transport="ipc", ip=str(sockets / "kernel"), **kwargs)

        def start_kernel(self, **kwargs):
            # The kernel works in its own folder, not where the judge keeps the notebook.
            super().start_kernel(**{**kwargs, "cwd": str(folder)})

        def format_kernel_cmd(self, extra_arguments=None):
            # The kernel reads a copy of the connection file from a folder of its own (never the runtime folder,
            # which may be the real /tmp).
            original = os.path.realpath(self.connection_file)
            copy = connection / Path(original).name
            copy.write_bytes(Path(original).read_bytes())
            copy.chmod(0o644)  # the sandbox's user reads it; its folder lies in the grader's scratch folder
            command = [str(copy) if arg == original else arg for arg in super().format_kernel_cmd(extra_arguments)]
            environment = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
                           "PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
                           "CAPTIONING_DATA_DIR": settings["data_dir"], "TORCH_HOME": "/tmp/torch",
                           "OMP_NUM_THREADS": str(settings["threads"]), "MKL_NUM_THREADS": str(settings["threads"])}
            if settings["bwrap"] is None:  # --no-sandbox: the limits only
                return ["env", "-i", *(f"{k}={v}" for k, v in environment.items()), *command]
            prefix = bwrap_command(settings["bwrap"], readable=[connection, Path(settings["data_dir"])],
                                   writable=[folder, sockets], cwd=folder, limits=limits, uid=settings["uid"],
                                   env=environment)
            return [*prefix, *command]

    nbval.kernel.KernelManager = SandboxedKernelManager


def _on_alarm(signum, frame):
    raise TimeoutError(f"stopped after {os.environ.get('GRADE_TEST_TIMEOUT')} s: the cell did not finish in time")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    seconds = int(float(os.environ.get("GRADE_TEST_TIMEOUT", "0") or 0))
    if seconds > 0:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(seconds)
    try:
        yield
    finally:
        if seconds > 0:
            signal.alarm(0)


def message_of(report) -> str:
    """The failure's own text, shortened."""
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    if isinstance(longrepr, tuple):  # a skip: (file, line, reason)
        text = str(longrepr[2])
    return text[:MAX_MESSAGE]


def pytest_collection_modifyitems(session, config, items):
    _emit({"event": "collected", "items": [item.nodeid for item in items]})


def pytest_runtest_logreport(report):
    """One record per cell: its failure where it failed, else its call's outcome."""
    if report.when != "call" and report.outcome == "passed":
        return
    if report.when == "teardown" and report.outcome != "passed":
        return  # the kernel shutting down after the last cell is not that cell's failure
    _emit({"event": "report", "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
           "message": message_of(report) if report.outcome != "passed" else ""})


def records(path: Path) -> List[CellRun]:
    """The cells of a run in order, each with its outcome ("not run" where none was recorded)."""
    cells, order = {}, []
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "collected":
            order = [str(n) for n in record.get("items", [])]
            cells = {n: CellRun(n, "not run") for n in order}
        elif record.get("event") == "report" and record.get("nodeid") in cells:
            cell = cells[record["nodeid"]]
            if cell.outcome in ("not run", "passed"):
                outcome = record.get("outcome")
                cell.outcome = "error" if outcome == "failed" and record.get("when") == "setup" else str(outcome)
                cell.message = str(record.get("message", ""))[:2000]
    return [cells[n] for n in order]
