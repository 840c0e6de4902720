"""
The graded checks of one submission, for helper.grade: the judge, a pytest
process of the grading tests (tests/grading, and tests/beyond: reported,
never counted) that never imports the submission, runs here, outside the
sandbox; the submission's module runs in the judge's worker, inside it
(helper.grading). The judge writes the grade file after every check, so a
judge stopped at the time limit still leaves the points of what it finished.

Nothing the submission can write is read back: the grade file lies in the
grader's own folder, which the sandbox does not contain.
"""
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from helper.grading.results import CheckResult, checks_from_grade
from helper.grading.sandbox import kill_group

REPO = Path(__file__).resolve().parents[2]
IMPORT_FAILED = "importing the module failed"


@dataclass
class CheckRun:
    """All checks of a submission and what happened to the judge."""

    checks: List[CheckResult] = field(default_factory=list)
    incidents: List[str] = field(default_factory=list)  # crashes and hangs, in words
    import_error: Optional[str] = None
    seconds: float = 0.0


def judge_command(module: Path, grade_file: Path, options, uid: Optional[int]) -> List[str]:
    """The pytest command line of the judge."""
    command = [
        sys.executable, "-m", "pytest", "-q", "--tb=no", "-rN", "-p", "no:cacheprovider", "-p", "no:xdist",
        "--impl", str(module), "--grade-json", str(grade_file), "--check-timeout", str(options.test_timeout),
        "--sandbox", "off" if options.no_sandbox else "required", "tests/grading",
    ]
    if uid is not None:
        command += ["--sandbox-uid", str(uid)]
    if not options.no_beyond:
        command.append("tests/beyond")
    if options.select:
        command += ["-k", options.select]
    return command


def run_checks(module: Path, out: Path, options, uid: Optional[int] = None) -> CheckRun:
    """
    Run the judge on module (see the module docstring).

    Inputs:
    - module: the submission's module (the judge copies it into its worker's sandbox)
    - out: a folder of the grader's for the grade file and the judge's log
    - options: the grader's options (time_limit, test_timeout, no_sandbox, no_beyond, select, threads)
    - uid: the sandbox's user for this submission (as root)

    Returns:
    - the CheckRun
    """
    grade_file, log = out / "grade.json", out / "judge.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads), "MKL_NUM_THREADS": str(options.threads),
           "CAPTIONING_IMPL": "", "CAPTIONING_BEYOND": "report", "PYTHONDONTWRITEBYTECODE": "1"}
    result = CheckRun()
    import time

    start = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(judge_command(module, grade_file, options, uid), cwd=REPO, env=env,
                                   stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            process.wait(timeout=options.time_limit)
        except subprocess.TimeoutExpired:
            result.incidents.append(f"the checks ran past the time limit ({options.time_limit:g} s) and were stopped")
        kill_group(process)
    result.seconds = time.monotonic() - start
    try:
        result.checks = checks_from_grade(json.loads(grade_file.read_text()))
    except (OSError, ValueError) as error:
        tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
        raise RuntimeError(f"the judge wrote no grade ({type(error).__name__}: {error}); its log ends:\n{tail}")
    graded = [c for c in result.checks if c.kind == "graded"]
    if graded and all(IMPORT_FAILED in c.message.split("\n", 1)[0] for c in graded):
        result.import_error = graded[0].message.removeprefix("Failed: ")
    result.incidents += sorted({f"{c.name}: {c.message}" for c in graded
                                if "stopped after" in c.message or "the worker process" in c.message})
    return result
