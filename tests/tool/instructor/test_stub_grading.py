"""
The grader on a student's untouched stub: the module tests run to the end,
each one passes or fails (no errors, no crash), the failures name the
functions still to write, and the stub earns nothing (only given code passes,
and given code is worth no points).

The stub is made from the file under test by replacing every
"# BEGIN SOLUTION" ... "# END SOLUTION" block with `raise NotImplementedError`,
as the student kit does. Stubs that return None (or a tuple of Nones) take
the same path through `_grading.run`, which is tested here directly, so one
subprocess run of the suite is enough.
"""

import ast
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from _grading import API_NAMES, GRADING_TEST_FILES, expect, Lazy, run
from helper.grading.remote import RemoteError, WorkerLost

REPO_ROOT = Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"^([ \t]*)# BEGIN SOLUTION[^\n]*\n.*?^[ \t]*# END SOLUTION[^\n]*$", re.MULTILINE | re.DOTALL)
# What the student writes first in each part: a full stub must name each.
FIRST_TO_WRITE = [
    "rnn_step_forward",
    "rnn_forward",
    "RNN.forward",
    "WordEmbedding.forward",
    "temporal_softmax_loss",
    "LSTM.step_forward",
    "LSTM.forward",
    "dot_product_attention",
    "AttentionLSTM.step_forward",
    "AttentionLSTM.forward",
    "CaptioningRNN",
]


def make_stub(source: str, body: str) -> str:
    """source with the code of every solution block replaced by body (kept at the block's indentation)."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{body}", source)


def class_has_solution(source: str, class_name: str) -> bool:
    """Whether the class holds a solution block (the student writes part of it)."""
    lines = source.splitlines()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return any("# BEGIN SOLUTION" in line for line in lines[node.lineno - 1 : node.end_lineno])
    return False


def run_suite_on(impl_file: Path, test_files, junit: Path, grade: Path) -> subprocess.CompletedProcess:
    """The test files against impl_file, in a subprocess, with a JUnit XML report."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        *test_files,
        f"--impl={impl_file}",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:xdist",
        "--tb=no",
        f"--junitxml={junit}",
        f"--grade-json={grade}",
    ]
    # One thread: tiny ops gain nothing from more, and the suite may run beside it.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAPTIONING_IMPL": ""}
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # grades the kit's module in a subprocess
def test_stub_file_gives_ordinary_failures_that_name_the_functions(impl, tmp_path):
    source = Path(impl.__file__).read_text()
    if not BLOCK.search(source):
        pytest.skip("the file under test has no solution blocks to stub out")
    stub = tmp_path / "stub" / "rnn_lstm_captioning.py"
    stub.parent.mkdir()
    stub.write_text(make_stub(source, "raise NotImplementedError"))
    junit, grade_file = tmp_path / "stub.xml", tmp_path / "grade.json"
    result = run_suite_on(stub, GRADING_TEST_FILES, junit, grade_file)

    tail = (result.stdout + result.stderr)[-3000:]
    expect(
        result.returncode == 1,
        f"on a stub, pytest must end with failing tests (exit 1); got exit {result.returncode}:\n{tail}",
    )
    failures, errors, total = {}, [], 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        total += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("error") is not None:
            errors.append(name)
        failure = case.find("failure")
        if failure is not None:
            failures[name] = failure.get("message", "")
    expect(not errors, f"on a stub, tests must fail, not error: {errors}")
    expect(total > 50 and len(failures) > total // 2, f"on a stub only {len(failures)} of {total} tests failed")
    unnamed = {name: message for name, message in failures.items() if not any(api in message for api in API_NAMES)}
    expect(not unnamed, f"on a stub, failure messages must name the API function: {unnamed}")
    messages = " ".join(failures.values())
    missing = [name for name in FIRST_TO_WRITE if f"{name} is not implemented" not in messages]
    expect(not missing, f"on a stub, no failure says that these are not implemented: {missing}")
    # Points for work done: the kit's module as handed out earns the points of the given code, which are none.
    grade = json.loads(grade_file.read_text())
    earned = [(t["nodeid"], t["earned"]) for t in grade["tests"] if t["earned"]]
    expect(grade["total"] == 0, f"the stub earned {grade['total']} points: {earned}")


# ---------------------------------------------------------------------------
# The grader's calling helpers, on the usual shapes of unfinished code
# ---------------------------------------------------------------------------


def failure_of(func, *args) -> str:
    """The message of the test failure that func(*args) raises."""
    with pytest.raises(pytest.fail.Exception) as raised:
        func(*args)
    return str(raised.value)


def test_run_reports_a_function_that_returns_none():
    assert failure_of(run, "rnn_step_forward", lambda: None) == "rnn_step_forward is not implemented (returned None)"


def test_run_reports_none_inside_a_returned_tuple():
    message = failure_of(run, "rnn_step_backward", lambda: (1, None, 3))
    assert message == "rnn_step_backward is not implemented (element 1 of its result is None)"


def raises(error):
    """A function that raises error, as a call into the worker does."""

    def call():
        raise error

    return call


def test_run_reports_not_implemented_and_other_errors_with_the_functions_name():
    unfinished = raises(RemoteError("NotImplementedError", "", "", not_implemented=True))
    broken = raises(RemoteError("NameError", "name 'next_h' is not defined", "LSTM.forward (line 3)"))
    assert failure_of(run, "LSTM.forward", unfinished) == "LSTM.forward is not implemented (NotImplementedError)"
    assert failure_of(run, "LSTM.forward", broken).startswith("LSTM.forward raised NameError")


def test_run_reports_a_worker_that_died_or_hung_as_a_failure_of_that_call():
    died = raises(WorkerLost("the worker process ended during the call: a segmentation fault (SIGSEGV)"))
    assert "segmentation fault" in failure_of(run, "rnn_forward", died)


def test_run_passes_results_through():
    assert run("f", lambda a, b=0: (a, b), 1, b=2) == (1, 2)


def test_lazy_builds_once_and_repeats_a_failed_build():
    calls = []

    def build_ok():
        calls.append(1)
        return "model"

    lazy = Lazy(build_ok)
    assert lazy.get() == "model" and lazy.get() == "model" and len(calls) == 1

    failing = Lazy(lambda: run("CaptioningRNN", lambda: None))
    first = failure_of(failing.get)
    assert failure_of(failing.get) == first == "CaptioningRNN is not implemented (returned None)"
