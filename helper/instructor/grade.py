"""
Grade a batch of submissions:

    python -m helper.grade SUBMISSION... --out grades.csv

A submission is a folder, a `rnn_lstm_captioning.py` file, or the zip of
`python -m helper.submit` (the module, the notebook, the trained attention
model). Writes grades.csv (one row per submission: points per rubric part,
notebook, model, total, status, reason, sandbox) and, in grades/NAME/ next
to it, feedback.txt (each failed check and what it expected) and
results.json (Gradescope's autograder format); for 2+ submissions,
similarity.csv and similarity.html next to the CSV
(helper.instructor.similarity; off with --no-similarity).

For each submission, several at once (--jobs, default: the cores):
1. its files are taken out of the hand-in (helper.instructor.handin): the
   trained model is read into memory, as tensors, before any code runs;
2. the judge runs the graded checks (helper.instructor.grade_checks): a
   process that never imports the submission, whose worker imports it in
   the sandbox; a module that does not import scores nothing ("import error");
3. its notebook, when it has one, is judged cell by cell against the
   reference notebook's checked cells (helper.instructor.grade_notebook);
4. its trained model captions the grader's validation images in a worker,
   and the grader scores the captions (helper.instructor.grade_model).

The trust model (README, "Instructors"): the submission's code runs only in
the sandbox (helper.grading.sandbox), as an unprivileged user of its own,
with nothing but the interpreter and its own files, no network, a
size-limited /tmp and limits on memory, time and processes. Everything that
decides a grade (expected values, comparisons, points, records, reports)
happens in processes it never runs in, from data it sends as plain values.
Without a working sandbox the grader refuses to run any submission, unless
--no-sandbox is given: then every row and feedback file says so.
"""
import argparse
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import List, Optional, Sequence

from helper.common.cli import run_command
from helper.grading.results import summarize_parts
from helper.grading.sandbox import SandboxUnavailable, bwrap_path, sandbox_note, sandbox_problem
from helper.instructor import grade_checks, grade_model, grade_notebook, grade_report, regrade, similarity
from helper.instructor.handin import MODULE, NOTEBOOK, WEIGHTS, submission_name, unpack
from helper.kit.rubric import TOTAL_POINTS

REFERENCE_NOTEBOOK = grade_checks.REPO / NOTEBOOK
FIRST_UID = 61000  # the sandbox users of the batch's jobs: FIRST_UID, FIRST_UID + 1, ...


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m helper.grade`."""
    p = argparse.ArgumentParser(prog="python -m helper.grade", description="Grade a batch of submissions.")
    p.add_argument("submissions", nargs="+", type=Path, help="folders, .py files or submission zips")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="the CSV (feedback goes next to it)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at once")
    p.add_argument("--time-limit", type=float, default=900, help="seconds of checks per submission")
    p.add_argument("--test-timeout", type=int, default=60, help="seconds one call into the module may take")
    p.add_argument("--cell-timeout", type=int, default=600, help="seconds one notebook cell may take")
    p.add_argument("--memory-gb", type=float, default=6, help="address space of a submission's process")
    p.add_argument("--select", help="a pytest -k expression: grade these checks only (for trying the grader)")
    p.add_argument("--no-beyond", action="store_true", help="skip the checks beyond the assignment")
    p.add_argument("--notebook-points", type=float, default=10, help="points of the notebook line (0: off)")
    p.add_argument("--notebook-data", default="shapes",
                   help="data set the notebooks load, made once before they run ('' : none)")
    p.add_argument("--reference-notebook", type=Path, default=REFERENCE_NOTEBOOK,
                   help="the notebook whose checked cells count")
    p.add_argument("--model-table", default=grade_model.DEFAULT_TABLE, help="METRIC>=VALUE:POINTS,... ('' : off)")
    p.add_argument("--model-data", default="shapes", help="the grader's data set to score models on")
    p.add_argument("--model-images", type=int, help="score on the first N validation images only")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run submissions without bubblewrap (they can then read and write what this user can)")
    p.add_argument("--keep-scratch", action="store_true", help="keep the scratch folders (for debugging)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-similarity", action="store_true",
                   help="no similarity report (similarity.csv/.html next to the CSV, for 2+ submissions)")
    p.add_argument("--regrade", type=Path, metavar="OLD_CSV",
                   help="an earlier grades.csv: keep its adjustment column, write what changed per student")
    return p


def empty_grade(name: str, options) -> dict:
    """A grade with no points yet."""
    return {"name": name, "status": "graded", "reason": "", "parts": summarize_parts([]), "checks": [],
            "notebook": None, "model": None, "total": 0.0, "max_total": 0.0, "sandbox": sandbox_note(options.bwrap),
            "seconds": 0.0, "suite": options.suite}


def grade_submission(source: Path, name: str, options) -> dict:
    """
    Grade one submission (see the module docstring); never raises for
    anything the submission does.

    Inputs:
    - source: the folder, .py or zip
    - name: its name in the reports
    - options: the parsed command line, completed by complete_options

    Returns:
    - the grade dict (helper.instructor.grade_report)
    """
    grade = empty_grade(name, options)
    start = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=f"grade-{name}-"))
    uid = options.uids.get()
    try:
        _grade_in(scratch, source, grade, options, uid)
    except Exception as error:  # noqa: BLE001 - a fault of the grader must not stop the batch
        grade["status"], grade["reason"] = "grader error", f"{type(error).__name__}: {error}"
    finally:
        options.uids.put(uid)
        if not options.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    grade["seconds"] = time.monotonic() - start
    grade["total"] = sum(p["earned"] for p in grade["parts"].values()) + sum(
        grade[k]["earned"] for k in ("notebook", "model") if grade[k])
    grade["max_total"] = TOTAL_POINTS + sum(grade[k]["points"] for k in ("notebook", "model") if grade[k])
    return grade


def _grade_in(scratch: Path, source: Path, grade: dict, options, uid: Optional[int]) -> None:
    """The steps of grade_submission, in its scratch folder (the grader's own: never in a sandbox)."""
    files = unpack(source, scratch / "work")
    similarity.keep_module(options, grade["name"], files["module"])
    reasons = list(files["problems"])
    if files["module"] is None:
        grade["status"], grade["reason"] = "missing", "; ".join(reasons + [f"no {MODULE} in the submission"])
        return
    (scratch / "out").mkdir()
    run = grade_checks.run_checks(files["module"], scratch / "out", options, uid)
    grade["checks"], grade["parts"] = run.checks, summarize_parts(run.checks)
    if run.import_error:
        grade["status"], grade["reason"] = "import error", "; ".join(reasons + [run.import_error])
        return
    if run.incidents:
        grade["status"] = "partial"
    reasons += run.incidents
    if options.notebook_points > 0 and files["notebook"] is not None:
        grade["notebook"] = grade_notebook.grade_notebook(files, scratch, options, uid)
    if options.model_table:
        grade["model"] = _grade_model(files, options, uid)
    grade["reason"] = "; ".join(reasons)


def _grade_model(files: dict, options, uid: Optional[int]) -> dict:
    """The model line: the submitted model captions the grader's images in a worker; scored here."""
    table = grade_model.parse_table(options.model_table)
    line = {"points": max(p for _, _, p in table), "earned": 0.0, "metrics": {}, "reason": ""}
    try:
        if files["checkpoint"] is None:
            raise ValueError(f"no trained model in the submission (expected {WEIGHTS})")
        line["metrics"] = grade_model.grade_model(files["checkpoint"], files["module"], options, uid)
        line["earned"] = grade_model.table_points(table, line["metrics"])
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        line["reason"] = str(error)
    return line


def grade_batch(sources: Sequence[Path], options) -> List[dict]:
    """Grade every submission, options.jobs at a time, with a progress bar; the grades in input order."""
    names, seen = [], {}
    for source in sources:
        name = submission_name(source)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    grades = [None] * len(sources)
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
        futures = {pool.submit(grade_submission, s, n, options): i for i, (s, n) in enumerate(zip(sources, names))}
        for future in tqdm(as_completed(futures), total=len(futures), desc="grading", unit="submission",
                           disable=options.no_progress):
            grades[futures[future]] = future.result()
    return grades


def complete_options(options) -> argparse.Namespace:
    """
    Check the options and add what the run decides: bwrap, threads, caches,
    the sandbox users. SandboxUnavailable, before any submission runs, when
    the sandbox does not work here and --no-sandbox was not given.
    """
    missing = [str(s) for s in options.submissions if not s.exists()]
    if missing:
        raise FileNotFoundError(f"no such submission: {', '.join(missing)}")
    if options.jobs < 1 or options.time_limit <= 0 or options.memory_gb <= 0:
        raise ValueError("--jobs, --time-limit and --memory-gb must be positive")
    if options.model_table:
        grade_model.parse_table(options.model_table)
    if not options.no_sandbox and sandbox_problem():
        raise SandboxUnavailable(f"no sandbox, no grading: {sandbox_problem()}. Once it works, run this again; to grade "
                           f"without it (submissions can then read and write what you can), add --no-sandbox")
    options.bwrap = None if options.no_sandbox else bwrap_path()
    options.suite = regrade.suite_stamp()  # the digest of the checks, stamped on every grade
    options.threads = max(1, (os.cpu_count() or 1) // options.jobs)
    options.data_cache = {}
    options.lock = threading.Lock()
    # Each job's sandbox runs as a user of its own: a process limit or a stray process of one never meets another.
    options.uids = queue.Queue()
    for slot in range(options.jobs):
        options.uids.put(FIRST_UID + slot)
    similarity.enable(options)
    return options


def grade_command(args: argparse.Namespace) -> None:
    """Grade, write the CSV and the per-submission files, print a summary."""
    options = complete_options(args)
    print(sandbox_note(options.bwrap))
    previous = regrade.read_previous(options.regrade) if options.regrade else None  # before anything is rewritten
    grades = grade_batch(options.submissions, options)
    if previous is not None:
        regrade.carry_over(previous, grades)
    grade_report.write_csv(options.out, grades)
    folder = options.out.with_suffix("")
    for grade in grades:
        grade_report.write_submission_files(folder / grade["name"], grade)
    for grade in grades:
        print(f"{grade['name']:<24} {grade['total']:7.2f} / {grade['max_total']:.2f}  {grade['status']}"
              + (f"  ({grade['reason'][:120]})" if grade["reason"] else ""))
    similarity_line = similarity.batch_report(options, options.out.parent)
    if similarity_line:
        print(similarity_line)
    if previous is not None:
        report = regrade.changes(previous, grades)
        print(regrade.report_text(report).rstrip())
        print("wrote", *regrade.write_changes(report, options.out))
    print(f"wrote {options.out} and {folder}/NAME/feedback.txt, results.json")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (0, 1 for bad input, 2 for bad options)."""
    return run_command(build_parser(), grade_command, argv)


if __name__ == "__main__":
    sys.exit(main())
