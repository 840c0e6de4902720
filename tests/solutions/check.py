"""
Prove that the suite grades the assignment, not our module: every correct
solution gets full marks, and swapped in place it keeps `make test` green.

    .venv/bin/python tests/solutions/check.py [--only typical ...] [--no-swap]

For each correct solution in tests/solutions/ (CORRECT below; zeros and
self_grading are fixtures of the grading's floor, checked by
tests/tool/instructor/):
1. `pytest tests/grading --impl SOLUTION` must give full marks;
2. in a copy of the repository with the solution in place of
   rnn_lstm_captioning.py, `make test` (the suite and the notebook) must pass.
Prints a line per step and exits non-zero when one fails.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOLUTIONS = Path(__file__).resolve().parent
CORRECT = ("typical", "loops", "reordered")
MODULE = "rnn_lstm_captioning.py"


def full_marks(solution: Path, out: Path) -> tuple:
    """(whether the graded tests give solution full marks, what to print)."""
    grade_file = out / "grade.json"
    command = [sys.executable, "-m", "pytest", "tests/grading", f"--impl={solution}", f"--grade-json={grade_file}",
               "-q", "--tb=line", "-p", "no:xdist"]
    env = {**os.environ, "CAPTIONING_IMPL": ""}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if not grade_file.is_file():
        return False, f"no grade written:\n{completed.stdout[-3000:]}{completed.stderr[-2000:]}"
    grade = json.loads(grade_file.read_text())
    failed = [t["nodeid"] + ": " + t["message"] for t in grade["tests"] if t["outcome"] != "passed"]
    verdict = f"{grade['total']:g} / {grade['max_total']:g} points"
    return grade["total"] == grade["max_total"] and not failed, "\n    ".join([verdict, *failed])


def copy_of_repo(target: Path) -> Path:
    """The repository's files as git sees them (tracked and untracked, not ignored), and the cached data sets."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)  # keeps times: make must not rebuild the venv
    for cached in (REPO_ROOT / "datasets").glob("*.h5"):
        os.link(cached, target / "datasets" / cached.name)
    # A repository of its own, as an instructor's clone is: some tests read the committed module.
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=check", "-c", "user.email=check@localhost",
                                                      "commit", "-qm", "copy"]):
        subprocess.run(["git", *command], cwd=target, check=True, capture_output=True)
    return target


def make_test_passes(solution: Path, scratch: Path) -> tuple:
    """(whether `make test` passes with solution in place of the module, what to print)."""
    repo = copy_of_repo(scratch / "repo")
    shutil.copy(solution, repo / MODULE)
    venv = REPO_ROOT / ".venv"
    command = ["make", "test", f"VENV={venv}"]
    env = {**os.environ, "CAPTIONING_IMPL": "", "CAPTIONING_BEYOND": ""}
    completed = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if " passed" in line or " failed" in line]
    tail = "" if completed.returncode == 0 else "\n" + completed.stdout[-4000:] + completed.stderr[-2000:]
    return completed.returncode == 0, "; ".join(lines) + tail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(CORRECT), help="the solutions to check")
    parser.add_argument("--no-swap", action="store_true", help="grade only; do not run make test with each in place")
    args = parser.parse_args(argv)
    ok = True
    for name in args.only:
        solution = SOLUTIONS / name / MODULE
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            started = time.monotonic()
            good, text = full_marks(solution, scratch)
            print(f"{name}: graded with --impl: {'full marks' if good else 'NOT full marks'}: {text} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            ok = ok and good
            if args.no_swap:
                continue
            started = time.monotonic()
            good, text = make_test_passes(solution, scratch)
            print(f"{name}: make test with it in place: {'passes' if good else 'FAILS'}: {text} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            ok = ok and good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
