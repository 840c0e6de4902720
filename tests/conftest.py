"""
Shared fixtures of the test suite, and the grading report.

The suite has three parts:
- tests/grading/  the contract of the standard assignment, graded: every
                  correct solution passes; each file is one part of
                  helper.kit.rubric, whose points its test cases share equally;
- tests/beyond/   what this project's own module does beyond the contract
                  (a batch of one, other grid sizes, clear errors): shown as
                  "beyond the assignment", never graded;
- tests/tool/     the tool: helper/ and the commands, laid out like helper/
                  (captioning/, data/, kit/, instructor/, dev/).

Choose the file under test with

    pytest tests --impl path/to/rnn_lstm_captioning.py
    CAPTIONING_IMPL=path/to/rnn_lstm_captioning.py pytest tests

By default the repo's own module is tested. The graded and beyond tests
never import it here: they judge it through a worker process
(helper.grading), inside bubblewrap where it works (`--sandbox required`
refuses to run without it, `--sandbox off` never uses it). The tool tests
(tests/tool) use the module in this process, placed in sys.modules under the
name `rnn_lstm_captioning`, so that helper code that imports the module sees
the implementation under test.

A check beyond the assignment that fails is reported (as xfail, and in the
summary), and does not fail the run, unless `--beyond strict` (or
CAPTIONING_BEYOND=strict) is given: CI gives it for this project's module.
`--grade-json FILE` writes the grade: points per part and per test.
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch.hub

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMPL = REPO_ROOT / "rnn_lstm_captioning.py"
sys.path.insert(0, str(REPO_ROOT))
import _grading  # noqa: E402
from helper.common.utils import import_file  # noqa: E402
from helper.grading.remote import Worker  # noqa: E402
from helper.grading.sandbox import Limits, bwrap_path, sandbox_problem  # noqa: E402
from helper.kit import rubric  # noqa: E402

# What the run recorded: graded and beyond tests by node id.
_STATE = {"tests": {}, "beyond": {}}
GRADING_DIR = Path(__file__).resolve().parent / "grading"
BEYOND_DIR = Path(__file__).resolve().parent / "beyond"


def pytest_unconfigure(config):
    if "cache_dir" in _STATE:  # the session's own cache folder: gone with the session
        shutil.rmtree(_STATE.pop("cache_dir"), ignore_errors=True)
        del os.environ["CAPTIONING_CACHE_DIR"]


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        action="store",
        default=None,
        help="path of the rnn_lstm_captioning.py to grade (default: $CAPTIONING_IMPL, else the repo's own)",
    )
    parser.addoption(
        "--beyond",
        choices=("report", "strict"),
        default=None,
        help="checks beyond the assignment: report their failures (default) or fail the run "
        "(strict; default from $CAPTIONING_BEYOND)",
    )
    parser.addoption("--grade-json", default=None, help="write the grade (points per part and test) to this file")
    parser.addoption(
        "--sandbox",
        choices=("auto", "required", "off"),
        default="auto",
        help="run the module's worker in bubblewrap: where it works (auto), or refuse to grade without it "
        "(required), or never (off)",
    )
    parser.addoption("--check-timeout", type=float, default=120.0, help="seconds one call into the module may take")
    parser.addoption("--sandbox-uid", type=int, default=None, help="the sandbox's user when run as root")


def pytest_configure(config):
    # The fast path's measured choices (helper.captioning.fast_path) of this session go to a folder of its own,
    # not the user's ~/.cache; subprocesses of the tests inherit it.
    if not os.environ.get("CAPTIONING_CACHE_DIR"):
        _STATE["cache_dir"] = os.environ["CAPTIONING_CACHE_DIR"] = tempfile.mkdtemp(prefix="captioning-cache-")
    config.addinivalue_line("markers", "part(key): the part of helper.kit.rubric that a graded test belongs to")
    config.addinivalue_line("markers", "beyond: checks what our module does beyond the contract (never graded)")
    config.addinivalue_line(
        "markers",
        "slow: the slow tier (training runs, torchrun, notebooks, batches of submissions, the self-check): "
        "`make test-all` runs it, `make test` leaves it out",
    )
    config.addinivalue_line(
        "markers",
        "unscored: a graded check of given code, or of names and shapes alone, that a module computing nothing "
        "could pass: reported with its part, worth 0 points",
    )


def impl_path(config) -> Path:
    """The file under test: --impl, else $CAPTIONING_IMPL, else the repo's module."""
    chosen = config.getoption("--impl") or os.environ.get("CAPTIONING_IMPL")
    return Path(chosen).resolve() if chosen else DEFAULT_IMPL


def beyond_mode(config) -> str:
    """'strict' or 'report' (see the module docstring)."""
    mode = config.getoption("--beyond") or os.environ.get("CAPTIONING_BEYOND") or "report"
    if mode not in ("report", "strict"):
        raise pytest.UsageError(f"CAPTIONING_BEYOND must be 'report' or 'strict'; got {mode!r}")
    return mode


@pytest.fixture(scope="session")
def impl(request):
    """The captioning module under test, imported in this process (for the tool's tests)."""
    return import_file(impl_path(request.config))


def sandbox_of(config):
    """bwrap's path for the worker, or None (see --sandbox); a UsageError when it is required and missing."""
    mode = config.getoption("--sandbox")
    if mode == "off":
        return None
    if mode == "required" and sandbox_problem():
        raise pytest.UsageError(f"--sandbox required: {sandbox_problem()}")
    return bwrap_path()


@pytest.fixture(scope="session")
def impl_in_worker(request, tmp_path_factory):
    """The module under test, in a worker process of its own (the graded and beyond tests' `impl`)."""
    config = request.config
    shared = tmp_path_factory.mktemp("worker-shared")  # files the tests lay out for the worker, read-only there
    shared.chmod(0o755)
    worker = Worker(impl_path(config), bwrap=sandbox_of(config), timeout=config.getoption("--check-timeout"),
                    limits=Limits(seconds=24 * 3600), uid=config.getoption("--sandbox-uid"), readable=[shared])
    _grading._WORKER.update(worker=worker, shared=shared)
    yield _grading.ModuleInWorker()
    worker.close()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory under tmp_path, for torchvision's weight cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored afterwards; set_dir changes it
    torch.hub.set_dir(str(hub))
    return hub


def pytest_report_header(config):
    mode = config.getoption("--sandbox")
    where = "no sandbox" if mode == "off" or sandbox_problem() else "bubblewrap"
    if mode != "off" and sandbox_problem():
        where += f" ({sandbox_problem()})"
    return (f"captioning implementation under test: {impl_path(config)}; beyond the contract: {beyond_mode(config)}; "
            f"its worker: {where}")


# ---------------------------------------------------------------------------
# Which part each test is in, and its points
# ---------------------------------------------------------------------------


def _in(item, folder: Path) -> bool:
    return folder in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _in(item, BEYOND_DIR):
            item.add_marker(pytest.mark.beyond)
        elif _in(item, GRADING_DIR) and item.get_closest_marker("part") is None:
            raise pytest.UsageError(f"{item.nodeid}: a graded test needs a part marker (pytestmark)")


def pytest_collection_finish(session):
    """Share each part's points among its scored test cases that will run (unscored ones get 0)."""
    counts = {}
    for item in session.items:
        marker = item.get_closest_marker("part")
        if marker is not None and item.get_closest_marker("unscored") is None:
            counts[marker.args[0]] = counts.get(marker.args[0], 0) + 1
    for item in session.items:
        marker = item.get_closest_marker("part")
        if marker is not None:
            key = marker.args[0]
            scored = item.get_closest_marker("unscored") is None and counts.get(key)
            item.user_properties.append(("points", rubric.part(key).points / counts[key] if scored else 0.0))


# ---------------------------------------------------------------------------
# Outcomes: beyond-the-contract failures are reported
# ---------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    config = item.config
    part = item.get_closest_marker("part")
    if part is not None:
        report.user_properties.append(("part", part.args[0]))
    if item.get_closest_marker("beyond") is not None:
        report.user_properties.append(("beyond", True))
        if report.failed and beyond_mode(config) == "report":
            # Shown as xfail "beyond the assignment": never a failure of the run.
            report.wasxfail = f"beyond the assignment: {_message(report)}"
            report.outcome = "skipped"


def _message(report) -> str:
    """The first line of a failure, for reports."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def pytest_runtest_logreport(report):
    """Keep each graded or beyond test's outcome (here, so that it also works under xdist's controller)."""
    properties = dict(report.user_properties)
    if "part" not in properties and "beyond" not in properties:
        return
    failed = report.failed or hasattr(report, "wasxfail")
    if report.when != "call" and not failed:
        return
    outcome = "failed" if failed else report.outcome
    if report.when != "call" and report.failed:
        outcome = "error"
    message = report.wasxfail if hasattr(report, "wasxfail") else _message(report) if failed else ""
    entry = {"nodeid": report.nodeid, "outcome": outcome, "message": message}
    table = _STATE["beyond"]
    if "part" in properties:
        entry.update(part=properties["part"], points=properties.get("points", 0.0))
        table = _STATE["tests"]
    previous = table.get(report.nodeid)
    if previous is None or previous["outcome"] == "passed":
        table[report.nodeid] = entry
    _write_grade(_CONFIG["config"])  # after every check: a judge stopped at its time limit keeps what it found


_CONFIG = {"config": None}


def pytest_sessionstart(session):
    _CONFIG["config"] = session.config


def _write_grade(config) -> None:
    """The grade so far to --grade-json, written under a temporary name and renamed."""
    path = config.getoption("--grade-json") if config is not None else None
    if path:
        path = Path(path)
        temporary = path.with_name(path.name + ".partial")
        temporary.write_text(json.dumps(grade(config), indent=2))
        temporary.replace(path)


def grade(config) -> dict:
    """The grade of the run: points per part and per graded test, and the checks beyond."""
    tests = list(_STATE["tests"].values())
    for entry in tests:
        entry["earned"] = entry["points"] if entry["outcome"] == "passed" else 0.0
    parts = []
    for part in rubric.PARTS:
        mine = [t for t in tests if t["part"] == part.key]
        if mine:
            parts.append(
                {
                    "key": part.key,
                    "title": part.title,
                    "points": part.points,
                    "earned": round(sum(t["earned"] for t in mine), 4),
                    "passed": sum(t["outcome"] == "passed" for t in mine),
                    "tests": len(mine),
                }
            )
    return {
        "impl": str(impl_path(config)),
        "total": round(sum(p["earned"] for p in parts), 4),
        "max_total": sum(p["points"] for p in parts),
        "parts": parts,
        "tests": tests,
        "beyond": list(_STATE["beyond"].values()),
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    result = grade(config)
    write = terminalreporter.write_line
    if result["parts"]:
        terminalreporter.section("grade (the contract of the assignment)")
        for part in result["parts"]:
            write(
                f"{part['title']:<62} {part['earned']:6.2f} / {part['points']:g}"
                f"   ({part['passed']} of {part['tests']} checks)"
            )
        write(f"{'total':<62} {result['total']:6.2f} / {result['max_total']:g}")
    if result["beyond"]:
        terminalreporter.section("beyond the assignment (our module's extras; never graded)")
        unmet = [b for b in result["beyond"] if b["outcome"] != "passed"]
        write(f"{len(result['beyond']) - len(unmet)} of {len(result['beyond'])} checks met")
        for entry in unmet:
            write(f"not met: {entry['nodeid']}: {entry['message']}")
    _write_grade(config)
