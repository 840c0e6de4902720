"""
The pytest plugin of the batch grader (helper.grade), loaded with
`-p helper.instructor.grade_plugin` in the process that runs a submission's checks.

It streams what happens, test by test, to the file named by $GRADE_EVENTS
(one JSON object a line, flushed at once), so that the grader still knows
which checks finished, and how, when the process dies, hangs or is killed:

    {"event": "collected", "items": [{"nodeid", "part", "kind"}]}
    {"event": "start", "nodeid"}
    {"event": "report", "nodeid", "outcome", "message"}
    {"event": "finished", "exitstatus"}

kind is "graded" (a file of tests/grading: part is its rubric key),
"beyond" (tests/beyond), "canary" (a check planted by the grader that must
fail) or "notebook" (a cell under nbval). Messages hold the exception's own
text only (what was expected and what came), never a traceback of the
grading suite's code.

It also stops a check that runs longer than $GRADE_TEST_TIMEOUT seconds
(SIGALRM: a Python loop or a sleep is interrupted, a hang inside C code is
left to the grader's time limit), moves the canaries behind the tests of
each graded file (so they run after the submission is imported), and under
nbval ignores stderr outputs (warnings of a library are not the student's).

The plugin runs in the same process as the submission's code, so the
stream is evidence, not proof: see helper.grade for how it is checked.
"""
import json
import os
import re
import signal

import pytest

# Test files of tests/grading and their rubric parts, for files without a
# `pytest.mark.part` marker.
PART_OF_FILE = {
    "test_rnn.py": "rnn",
    "test_embedding_loss.py": "embedding_loss",
    "test_lstm.py": "lstm",
    "test_attention.py": "attention",
    "test_encoder.py": "encoder",
    "test_captioning_model.py": "captioning",
}
MAX_MESSAGE = 1500


class TestTimeout(BaseException):
    """A check ran past its time limit (BaseException: `except Exception` in a submission cannot swallow it)."""


_stream = None
_canaries = None  # the folder name of the grader's canaries


def _emit(record: dict) -> None:
    """Write one event line to the stream, at once."""
    if _stream is not None:
        _stream.write(json.dumps(record) + "\n")
        _stream.flush()


def pytest_configure(config):
    global _stream, _canaries
    # Taken out of the environment before any submission code runs, so that it cannot read them there.
    path = os.environ.pop("GRADE_EVENTS", None)
    _canaries = os.environ.pop("GRADE_CANARIES", None)
    if path:
        _stream = open(path, "a", encoding="utf-8")
    if config.pluginmanager.hasplugin("nbval"):
        _ignore_stderr_in_nbval()


def _ignore_stderr_in_nbval() -> None:
    """Make nbval compare cell outputs without their stderr streams."""
    from nbval.plugin import IPyNbCell

    compare = IPyNbCell.compare_outputs

    def without_stderr(outputs):
        return [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]

    def compare_outputs(self, test, ref, skip_compare=None):
        return compare(self, without_stderr(test), without_stderr(ref), skip_compare)

    IPyNbCell.compare_outputs = compare_outputs


def item_kind(item) -> tuple:
    """(kind, part key or None) of a collected item (see the module docstring)."""
    path = str(item.nodeid).split("::")[0]
    parts = path.split("/")
    marker = item.get_closest_marker("part")
    if path.endswith(".ipynb"):
        return "notebook", None
    if _canaries and _canaries in parts:
        return "canary", None
    if "grading" in parts:
        key = marker.args[0] if marker and marker.args else PART_OF_FILE.get(parts[-1])
        return "graded", key
    if "beyond" in parts:
        return "beyond", None
    return "other", None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Canaries behind the graded tests of each file, then the list to the stream."""
    canaries = [item for item in items if item_kind(item)[0] == "canary"]
    rest = [item for item in items if item_kind(item)[0] != "canary"]
    ordered, pending = [], list(canaries)
    for i, item in enumerate(rest):
        ordered.append(item)
        last_of_file = i + 1 == len(rest) or rest[i + 1].path != item.path
        if last_of_file and item_kind(item)[0] == "graded" and pending:
            ordered.append(pending.pop(0))
    ordered.extend(pending)
    items[:] = ordered
    _emit(
        {
            "event": "collected",
            "items": [{"nodeid": it.nodeid, "kind": item_kind(it)[0], "part": item_kind(it)[1]} for it in items],
        }
    )


def _on_alarm(signum, frame):
    raise TestTimeout(f"stopped after {os.environ.get('GRADE_TEST_TIMEOUT')} s: the check did not finish in time")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _emit({"event": "start", "nodeid": item.nodeid})
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
    """The exception's own text of a failed report, without the suite's code, shortened."""
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    if isinstance(longrepr, tuple):  # a skip: (file, line, reason)
        text = str(longrepr[2])
    # pytest's assertion explanations add lines "+  where x = f(...)" that show the
    # test's expressions (the suite's code): keep the message up to them.
    kept = []
    for line in text.splitlines():
        if re.match(r"\s*\+\s+(where|and)\b", line):
            break
        kept.append(line)
    text = "\n".join(kept).strip() or text.splitlines()[0] if text else ""
    return text[:MAX_MESSAGE]


def pytest_runtest_logreport(report):
    """One record per test: its failure where it failed, else its call's outcome."""
    if report.when != "call" and report.outcome == "passed":
        return
    # A setup error or a skip ends the test; a teardown failure after a pass counts as failed.
    _emit(
        {
            "event": "report",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "message": message_of(report) if report.outcome != "passed" else "",
        }
    )


def pytest_sessionfinish(session, exitstatus):
    _emit({"event": "finished", "exitstatus": int(exitstatus)})
