"""
The graded checks of one submission, for helper.grade: a fresh copy of the
test suite in the scratch folder with canaries planted in it, pytest run in
rounds until every check has an outcome, and the outcomes turned into
points.

Rounds: the checks run in one pytest process; when it dies (a segmentation
fault, os._exit, SIGXFSZ) or hangs past the time limit, the check it was
running is recorded as failed with that reason, and a new process runs the
checks not yet done. A round in which no check finished ends the rounds:
the rest fail with the same reason (a module that crashes on import would
otherwise crash once per check).

Canaries: checks with names drawn at random for this run, in a folder of
their own, each built to fail for every submission (plain arithmetic,
torch.allclose/equal/testing.assert_close and the suite's check_close on
unequal values, a submission's output against a deliberately wrong value).
One that passes proves that the process's comparisons or its reporting were
tampered with.
"""
import hashlib
import json
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from helper.instructor.sandbox import Limits, run_limited
from helper.kit.rubric import PARTS

REPO = Path(__file__).resolve().parents[2]
# What the grading run needs of the repository, copied fresh for each submission.
# (tests/*.py: conftest.py and the suite's helper modules, whatever their names.)
SUITE_FILES = ["pytest.ini", "tests/*.py"]
SUITE_DIRS = ["tests/grading", "tests/beyond", "helper"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")

CANARY_TEMPLATE = '''"""Checks planted by the grader: every one of them must fail."""
import torch
import torch.nn.functional as F

try:
    from _grading import check_close
except Exception:  # the suite changed: compare with == instead
    check_close = None


def _compare(actual, expected):
    if check_close is not None:
        check_close("check", actual, expected)
    else:
        assert actual == expected


def test_{name}_arithmetic():
    total = sum(range(4))
    assert total == 7


def test_{name}_allclose():
    assert torch.allclose(torch.zeros(3), torch.ones(3))


def test_{name}_equal():
    assert torch.equal(torch.zeros(3), torch.ones(3))


def test_{name}_assert_close():
    torch.testing.assert_close(torch.zeros(3), torch.ones(3))


def test_{name}_check_close():
    _compare(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))


def test_{name}_output(impl):
    generator = torch.Generator().manual_seed({seed})
    x = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (2, 3), generator=generator)
    wrong = F.cross_entropy(x.reshape(6, 5), y.reshape(6), reduction="sum") / 2 + 1.0
    _compare(impl.temporal_softmax_loss(x, y), wrong)
'''


@dataclass
class Check:
    """One check's result."""

    nodeid: str
    kind: str  # graded, beyond, canary
    part: Optional[str]
    outcome: str = "not run"  # passed, failed, skipped, error, not run
    message: str = ""
    points: float = 0.0
    earned: float = 0.0


@dataclass
class CheckRun:
    """All checks of a submission and what happened to the process."""

    checks: List[Check] = field(default_factory=list)
    incidents: List[str] = field(default_factory=list)  # crashes and hangs, in words
    tampering: Optional[str] = None
    seconds: float = 0.0


def tree_digest(root: Path) -> str:
    """A hash of every file's path and content under root."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def prepare_suite(suite: Path, canary: str, seed: int) -> str:
    """
    Copy the test suite and helper/ to suite, plant the canaries.

    Inputs:
    - suite: a new folder
    - canary: the canaries' random name
    - seed: for the canary's inputs

    Returns:
    - the digest of the suite folder (tree_digest), to check it afterwards
    """
    for pattern in SUITE_FILES:
        for source in sorted(REPO.glob(pattern)):
            target = suite / source.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for name in SUITE_DIRS:
        shutil.copytree(REPO / name, suite / name, ignore=IGNORED)
    folder = suite / "tests" / canary
    folder.mkdir()
    (folder / f"test_{canary}.py").write_text(CANARY_TEMPLATE.format(name=canary, seed=seed))
    return tree_digest(suite)


def parse_events(path: Path) -> List[dict]:
    """The event records of a stream file; lines that are not JSON objects are dropped."""
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def merge_outcome(old: str, new: str) -> str:
    """The worse of two outcomes of one check (a teardown error after a pass fails it)."""
    rank = {"not run": 0, "passed": 1, "skipped": 2, "failed": 3, "error": 3}
    return new if rank.get(new, 3) >= rank.get(old, 0) else old


def apply_round(checks: Dict[str, Check], events: List[dict], canary: str) -> tuple:
    """
    Fold one round's events into checks.

    Returns:
    - (finished: whether pytest reached its end, reported: checks that got an
      outcome this round, running: the check started but never reported, or None)
    """
    started, reported, finished = [], set(), False
    for record in events:
        kind = record.get("event")
        if kind == "collected" and not checks:
            for item in record.get("items", []):
                nodeid = str(item.get("nodeid"))
                is_canary = f"/{canary}/" in nodeid
                checks[nodeid] = Check(nodeid, "canary" if is_canary else item.get("kind", "other"), item.get("part"))
        elif kind == "start":
            started.append(str(record.get("nodeid")))
        elif kind == "report" and record.get("nodeid") in checks and record.get("nodeid") in started:
            # (a report of a check that has not started is not the plugin's: ignored)
            check = checks[record["nodeid"]]
            if record.get("when") == "teardown" and check.kind not in ("graded", "beyond", "canary"):
                continue  # a notebook's kernel shutting down after its last cell is not the cell's failure
            outcome = {"failed": "failed" if record.get("when") == "call" else "error"}.get(
                record.get("outcome"), record.get("outcome")
            )
            if merge_outcome(check.outcome, outcome) != check.outcome:
                check.outcome, check.message = outcome, str(record.get("message", ""))[:2000]
            reported.add(check.nodeid)
        elif kind == "finished":
            finished = True
    running = next((n for n in reversed(started) if n not in reported), None)
    return finished, reported, running


def pytest_command(
    impl: Path, suite: Path, canary: str, select: Optional[str], deselect: List[str], beyond: bool = True
) -> List[str]:
    """The pytest command line of a round."""
    command = [
        sys.executable, "-m", "pytest", "-p", "helper.instructor.grade_plugin", "-c", str(suite / "pytest.ini"),
        "--rootdir", str(suite), "-q", "--tb=no", "--show-capture=no", "-rN", "-p", "no:cacheprovider",
        "--impl", str(impl),
        str(suite / "tests" / "grading"), str(suite / "tests" / canary),
    ]
    if beyond:
        command.append(str(suite / "tests" / "beyond"))
    if select:
        command += ["-k", f"({select}) or {canary}"]
    for nodeid in deselect:
        command += ["--deselect", nodeid]
    return command


def run_checks(
    scratch: Path, impl: Path, env: dict, limits: Limits, bwrap, select=None, beyond=True, max_rounds=8
) -> CheckRun:
    """
    Run the graded checks on impl in rounds (see the module docstring).

    Inputs:
    - scratch: the submission's scratch folder (suite/ and out/ are made here)
    - impl: the submission's module, inside scratch
    - env: the child's environment (GRADE_EVENTS and GRADE_CANARIES are added)
    - limits: for all rounds together (each round gets the time left)
    - bwrap: bwrap's path, or None
    - select: a pytest -k expression choosing checks, or None for all
    - beyond: run the checks beyond the assignment too (reported, never counted)
    - max_rounds: pytest processes at most

    Returns:
    - the CheckRun, points not yet assigned (see assign_points)
    """
    canary = "c" + secrets.token_hex(6)
    suite, out = scratch / "suite", scratch / "out"
    digest = prepare_suite(suite, canary, seed=secrets.randbelow(10**6))
    checks: Dict[str, Check] = {}
    result = CheckRun()
    for round_number in range(max_rounds):
        left = limits.seconds - result.seconds
        if left <= 5:
            result.incidents.append("the time limit of the checks ran out")
            break
        events_file = out / f"events-{round_number}.jsonl"
        done = [n for n, c in checks.items() if c.outcome != "not run"]
        command = pytest_command(impl, suite, canary, select, done, beyond)
        round_env = {**env, "GRADE_EVENTS": str(events_file), "GRADE_CANARIES": canary}
        outcome = run_limited(
            command, scratch, suite, round_env, Limits(left, limits.memory_bytes, limits.file_bytes),
            out / "checks.log", bwrap, read_only=[suite],
        )
        result.seconds += outcome.seconds
        finished, reported, running = apply_round(checks, parse_events(events_file), canary)
        if finished and not outcome.describe():
            break
        why = outcome.describe() or f"the test process ended early (exit status {outcome.returncode})"
        if not checks:
            result.incidents.append(f"the checks could not start: {why}")
            break
        if running is not None:
            checks[running].outcome, checks[running].message = "error", f"stopped: {why}"
            result.incidents.append(f"{short_name(running)}: {why}")
        if not (reported - {running}):
            for check in checks.values():
                if check.outcome == "not run":
                    check.outcome, check.message = "error", f"not run: the test process {why}"
            break
    if tree_digest(suite) != digest:
        result.tampering = "the test files in the scratch folder were changed"
    result.checks = list(checks.values())
    canaries = [c for c in result.checks if c.kind == "canary"]
    passed = [short_name(c.nodeid) for c in canaries if c.outcome == "passed"]
    if passed:
        result.tampering = f"checks that must fail passed ({', '.join(passed)}): comparisons or reporting were patched"
    elif checks and len(canaries) == 0:
        result.tampering = "the grader's control checks are missing from the test run"
    return result


def short_name(nodeid: str) -> str:
    """A check's name without its folders: 'test_rnn.py::test_x[float32]'."""
    return nodeid.split("/")[-1]


def assign_points(run: CheckRun) -> Dict[str, dict]:
    """
    Share each part's points equally among its graded checks and give the
    passed ones theirs (none at all when tampering was found).

    Returns:
    - {part key: {"title", "points", "earned", "passed", "tests"}}
    """
    summary = {}
    for part in PARTS:
        graded = [c for c in run.checks if c.kind == "graded" and c.part == part.key]
        for check in graded:
            check.points = part.points / len(graded)
            check.earned = check.points if check.outcome == "passed" and run.tampering is None else 0.0
        summary[part.key] = {
            "title": part.title,
            "points": part.points,
            "earned": sum(c.earned for c in graded),
            "passed": sum(c.outcome == "passed" for c in graded),
            "tests": len(graded),
        }
    return summary
