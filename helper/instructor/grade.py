"""
Grade a batch of submissions:

    python -m helper.grade SUBMISSION... --out grades.csv

A submission is a folder, a `rnn_lstm_captioning.py` file, or the zip of
`python -m helper.submit` (the module, the notebook, the trained attention
model). Writes grades.csv (one row per submission: points per rubric part,
notebook, model, total, status, reason) and, in grades/NAME/ next to it,
feedback.txt (each failed check and what it expected) and results.json
(Gradescope's autograder format); for 2+ submissions, similarity.csv and
similarity.html next to the CSV (helper.instructor.similarity; off with --no-similarity).

For each submission, in a scratch folder of its own, in its own processes,
several submissions at once (--jobs, default: the cores):
1. its module is imported once (a syntax error, an import that raises,
   hangs, exits or crashes ends here: status "import error", no points);
2. the graded checks (tests/grading, and tests/beyond: reported, never
   counted) run against it from a fresh copy of the suite (helper.instructor.grade_checks);
3. its notebook, when it has one, runs under nbval (helper.instructor.grade_notebook);
4. its trained model, when it has one, captions the validation images and
   is scored (helper.instructor.grade_model).

Containment (helper.instructor.sandbox): time, memory and file-size limits always;
inside bubblewrap where it works (read-only file system but the scratch
folder, no network), else the report says "NO SANDBOX".

What a submission can and cannot do to its grade. Its code runs in the
same process as the checks (that is how pytest grades a module), so that
process's report is evidence, not proof. Against it:
- the suite is a fresh copy per submission, read-only inside bwrap, and its
  digest is compared afterwards (changed: status "tampering", no points);
- canaries: checks with random names, planted in the copy, that fail for
  any submission; one that passes means the comparisons or the reporting
  were patched (status "tampering", no points); the suite's own tamper check
  ("grading refused: ...") counts the same;
- points, statuses and files are computed and written by the grader, from
  records it reads back and validates; the model's captions are scored by
  the grader against references that never enter the sandbox; the
  notebook's outputs are compared by an nbval process the notebook's code
  does not run in.
Limits: code in the checks' process can read the canary file and the
event stream it writes to, so a submission written to defeat this grader
in particular (recognising the canaries by their folder, forging the
stream) can still forge passes; that takes targeted effort and leaves the
forging code in the submission for a human to find. A notebook's kernel
runs in the same sandbox as the nbval process and could, in the same
targeted way, write records into its event file. A hang inside C code is
stopped by the wall-clock limit only (the per-check alarm interrupts Python
code). Without bwrap a submission can also read and write what the grading
user can, and reach the network.
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import List, Optional, Sequence

from helper.common.cli import run_command
from helper.instructor import grade_checks, grade_model, grade_notebook, grade_report, similarity
from helper.instructor.sandbox import Limits, bwrap_path, run_limited, sandbox_note
from helper.kit.rubric import PARTS, TOTAL_POINTS

MODULE, NOTEBOOK = "rnn_lstm_captioning.py", "rnn_lstm_captioning.ipynb"
WEIGHTS = "runs/notebook/attn/best.pt"
MAX_MEMBER_BYTES = 500 << 20
REFERENCE_NOTEBOOK = grade_checks.REPO / NOTEBOOK
# Imports the module at argv[1] as the tests do, then prints the nonce argv[2].
PROBE = (
    "import importlib.util,sys;s=importlib.util.spec_from_file_location('rnn_lstm_captioning',sys.argv[1]);"
    "m=importlib.util.module_from_spec(s);sys.modules[s.name]=m;s.loader.exec_module(m);"
    "print('imported',sys.argv[2])"
)


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m helper.grade`."""
    p = argparse.ArgumentParser(prog="python -m helper.grade", description="Grade a batch of submissions.")
    p.add_argument("submissions", nargs="+", type=Path, help="folders, .py files or submission zips")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="the CSV (feedback goes next to it)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="submissions graded at once")
    p.add_argument("--time-limit", type=float, default=900, help="seconds of checks per submission")
    p.add_argument("--test-timeout", type=int, default=60, help="seconds one check may take")
    p.add_argument("--import-timeout", type=float, default=120, help="seconds the module may take to import")
    p.add_argument("--cell-timeout", type=int, default=600, help="seconds one notebook cell may take")
    p.add_argument("--memory-gb", type=float, default=6, help="address space of a submission's process")
    p.add_argument("--select", help="a pytest -k expression: grade these checks only (for trying the grader)")
    p.add_argument("--no-beyond", action="store_true", help="skip the checks beyond the assignment")
    p.add_argument("--notebook-points", type=float, default=10, help="points of the notebook line (0: off)")
    p.add_argument("--notebook-data", default="shapes",
                   help="data set the notebooks load, made once before they run ('' : none)")
    p.add_argument("--reference-notebook", type=Path, default=REFERENCE_NOTEBOOK, help="whose markers count")
    p.add_argument("--model-table", default=grade_model.DEFAULT_TABLE, help="METRIC>=VALUE:POINTS,... ('' : off)")
    p.add_argument("--model-data", help="data to score models on (default: the one each was trained on)")
    p.add_argument("--model-images", type=int, help="score on the first N validation images only")
    p.add_argument("--no-sandbox", action="store_true", help="do not use bubblewrap even where it works")
    p.add_argument("--keep-scratch", action="store_true", help="keep the scratch folders (for debugging)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-similarity", action="store_true",
                   help="no similarity report (similarity.csv/.html next to the CSV, for 2+ submissions)")
    return p


def submission_name(source: Path) -> str:
    """alice.zip, alice/, alice/rnn_lstm_captioning.py -> alice; safe for file names."""
    source = source.resolve()
    stem = source.parent.name if source.name == MODULE else source.stem if source.is_file() else source.name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem) or "submission"


def _pick(names: List[str], wanted: str) -> Optional[str]:
    """The member called wanted: exactly, else the shortest path ending in its name."""
    if wanted in names:
        return wanted
    base = wanted.rsplit("/", 1)[-1]
    ends = sorted((n for n in names if n.rsplit("/", 1)[-1] == base), key=len)
    return ends[0] if ends else None


def unpack(source: Path, into: Path) -> dict:
    """
    Copy a submission's files into a folder under fixed names.

    Returns:
    - {"module", "notebook", "weights": Path or None, "problems": [str]}
    """
    into.mkdir(parents=True, exist_ok=True)
    found = {"module": None, "notebook": None, "weights": None, "problems": []}
    targets = {"module": (MODULE, into / MODULE), "notebook": (NOTEBOOK, into / NOTEBOOK),
               "weights": (WEIGHTS, into / "weights.pt")}
    if source.is_file() and source.suffix == ".py":
        shutil.copyfile(source, into / MODULE)
        found["module"] = into / MODULE
    elif source.is_dir():
        names = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() and not p.is_symlink()]
        for key, (wanted, target) in targets.items():
            member = _pick(names, wanted)
            if member:
                shutil.copyfile(source / member, target)
                found[key] = target
    elif zipfile.is_zipfile(source):
        _unzip(source, targets, found)
    else:
        found["problems"].append(f"{source.name} is not a folder, a .py file or a zip")
    return found


def _unzip(source: Path, targets: dict, found: dict) -> None:
    """The wanted members of a zip, each checked for its size; nothing else is extracted."""
    with zipfile.ZipFile(source) as archive:
        infos = {i.filename: i for i in archive.infolist() if not i.is_dir()}
        for key, (wanted, target) in targets.items():
            member = _pick(list(infos), wanted)
            if member is None:
                continue
            if infos[member].file_size > MAX_MEMBER_BYTES:
                found["problems"].append(f"{member} is larger than {MAX_MEMBER_BYTES >> 20} MB")
                continue
            try:
                with archive.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found[key] = target
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                found["problems"].append(f"{member} cannot be read from the zip ({error})")


def child_env(scratch: Path, suite: Path, threads: int, test_timeout: int) -> dict:
    """The whole environment of a submission's processes (nothing of the grader's own)."""
    home = scratch / "home"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(scratch / "tmp"),
        "PYTHONPATH": str(suite), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MPLBACKEND": "Agg",
        "TORCH_HOME": str(home / "torch"), "GRADE_TEST_TIMEOUT": str(test_timeout), "LANG": "C.UTF-8",
        "CAPTIONING_DATA_DIR": os.environ.get("CAPTIONING_DATA_DIR", str(grade_checks.REPO / "datasets")),
    }


def empty_grade(name: str, options) -> dict:
    """A grade with no points yet."""
    parts = {p.key: {"title": p.title, "points": p.points, "earned": 0.0, "passed": 0, "tests": 0} for p in PARTS}
    return {"name": name, "status": "graded", "reason": "", "parts": parts, "checks": [], "notebook": None,
            "model": None, "total": 0.0, "max_total": 0.0, "sandbox": sandbox_note(options.bwrap), "seconds": 0.0}


def grade_submission(source: Path, name: str, options) -> dict:
    """
    Grade one submission (see the module docstring); never raises for
    anything the submission does.

    Inputs:
    - source: the folder, .py or zip
    - name: its name in the reports
    - options: the parsed command line, with .bwrap and .data_cache added

    Returns:
    - the grade dict (helper.instructor.grade_report)
    """
    grade = empty_grade(name, options)
    start = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix=f"grade-{name}-"))
    try:
        _grade_in(scratch, source, grade, options)
    except Exception as error:  # noqa: BLE001 - a fault of the grader must not stop the batch
        grade["status"], grade["reason"] = "grader error", f"{type(error).__name__}: {error}"
    finally:
        if not options.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    grade["seconds"] = time.monotonic() - start
    grade["total"] = sum(p["earned"] for p in grade["parts"].values()) + sum(
        grade[k]["earned"] for k in ("notebook", "model") if grade[k])
    grade["max_total"] = TOTAL_POINTS + sum(grade[k]["points"] for k in ("notebook", "model") if grade[k])
    return grade


def _grade_in(scratch: Path, source: Path, grade: dict, options) -> None:
    """The steps of grade_submission, in its scratch folder."""
    for folder in ("work", "home", "tmp", "out", "suite", "job"):
        (scratch / folder).mkdir()
    files = unpack(source, scratch / "work")
    similarity.keep_module(options, grade["name"], files["module"])
    limits = Limits(options.time_limit, int(options.memory_gb * (1 << 30)))
    env = child_env(scratch, scratch / "suite", options.threads, options.test_timeout)
    reasons = list(files["problems"])
    if files["module"] is None:
        grade["status"], grade["reason"] = "missing", "; ".join(reasons + [f"no {MODULE} in the submission"])
        return
    imported = _probe_import(scratch, files["module"], env, options)
    if imported:
        grade["status"], grade["reason"] = "import error", imported
        return
    run = grade_checks.run_checks(scratch, files["module"], env, limits, options.bwrap, select=options.select,
                                  beyond=not options.no_beyond)
    grade["parts"], grade["checks"] = grade_checks.assign_points(run), run.checks
    refused = next((c.message for c in run.checks if c.message.startswith("grading refused")), None)
    tampering = run.tampering or refused
    if tampering:
        grade["status"] = "tampering"
        reasons.insert(0, f"tampering: {tampering}")
        for part in grade["parts"].values():
            part["earned"] = 0.0
    elif run.incidents:
        grade["status"] = "partial"
    reasons += run.incidents
    if options.notebook_points > 0 and files["notebook"] is not None:
        grade["notebook"] = _grade_notebook(scratch, files, env, limits, options)
    if options.model_table:
        grade["model"] = _grade_model(scratch, files, env, limits, options)
    if tampering:
        for key in ("notebook", "model"):
            if grade[key]:
                grade[key]["earned"] = 0.0
    grade["reason"] = "; ".join(reasons)


def _probe_import(scratch: Path, module: Path, env: dict, options) -> str:
    """'' when the module imports in its sandbox, else why not (the end of its output, or the signal)."""
    nonce = os.urandom(8).hex()
    log = scratch / "out" / "import.log"
    limits = Limits(options.import_timeout, int(options.memory_gb * (1 << 30)))
    outcome = run_limited([sys.executable, "-c", PROBE, str(module), nonce], scratch, scratch / "work", env,
                          limits, log, options.bwrap, read_only=[scratch / "suite"])
    if outcome.returncode == 0 and f"imported {nonce}" in outcome.log_tail:
        return ""
    why = outcome.describe()
    if why:
        return f"importing the module {why}"
    lines = [line for line in outcome.log_tail.strip().splitlines() if line.strip()]
    last = lines[-1][:300] if lines else f"exit status {outcome.returncode}"
    return f"importing the module failed: {last}"


def _grade_notebook(scratch: Path, files: dict, env: dict, limits: Limits, options) -> dict:
    """The notebook line: nbval on the prepared copy, cell by cell."""
    line = {"points": options.notebook_points, "earned": 0.0, "cells": [], "added_markers": [], "reason": ""}
    target = scratch / "work" / NOTEBOOK
    try:
        prepared = grade_notebook.prepare_notebook(files["notebook"], options.reference_notebook, target)
    except ValueError as error:
        line["reason"] = str(error)
        return line
    ensure_notebook_data(options)
    sanitize = scratch / "suite" / "nbval_sanitize.cfg"
    sanitize.write_text(grade_notebook.SANITIZE)
    events = scratch / "out" / "notebook.jsonl"
    command = grade_notebook.nbval_command(sys.executable, target, sanitize, options.cell_timeout)
    # nbval stops a cell at --cell-timeout; the plugin's alarm only backs it up.
    cell_env = {**env, "GRADE_EVENTS": str(events), "GRADE_TEST_TIMEOUT": str(options.cell_timeout + 30)}
    outcome = run_limited(command, scratch, scratch / "work", cell_env, limits,
                          scratch / "out" / "notebook.log", options.bwrap, read_only=[scratch / "suite"])
    checks = {}
    grade_checks.apply_round(checks, grade_checks.parse_events(events), canary="-")
    line["cells"] = grade_notebook.classify_cells(list(checks.values()), prepared["markers"])
    line["added_markers"] = prepared["added_markers"]
    line["earned"] = grade_notebook.notebook_points(line["cells"], options.notebook_points)
    if outcome.describe():
        line["reason"] = f"the notebook run {outcome.describe()}"
    if prepared["added_markers"]:
        line["reason"] = "; ".join(filter(None, [line["reason"], f"{len(prepared['added_markers'])} nbval "
                                                 "markers added by the student were not obeyed"]))
    return line


def ensure_notebook_data(options) -> None:
    """
    Generate the "shapes" data once, here, when its cache is missing: the
    notebooks load it, and inside the sandbox the data folder is read-only.
    """
    if options.notebook_data != "shapes":
        return
    with options.lock:
        data_dir = Path(child_env(Path("/"), Path("/"), 1, 0)["CAPTIONING_DATA_DIR"])
        if not any(data_dir.glob("shapes-*.h5")):
            from helper.data.datasets import load_dataset

            load_dataset("shapes", data_dir=data_dir)


def _grade_model(scratch: Path, files: dict, env: dict, limits: Limits, options) -> dict:
    """The model line: prepare the job, caption in the sandbox, score here."""
    table = grade_model.parse_table(options.model_table)
    line = {"points": max(p for _, _, p in table), "earned": 0.0, "metrics": {}, "reason": ""}
    job, out = scratch / "job" / "job.pt", scratch / "out" / "captions.pt"
    try:
        if files["weights"] is None:
            raise ValueError(f"no trained model in the submission (expected {WEIGHTS})")
        weights = files["weights"]
        prepared = grade_model.prepare_job(weights, job, options.model_data, options.model_images,
                                           options.data_cache)
        command = [sys.executable, "-m", "helper.instructor.grade_model", str(files["module"]), str(job), str(out)]
        outcome = run_limited(command, scratch, scratch / "suite", env, limits, scratch / "out" / "model.log",
                              options.bwrap, read_only=[scratch / "suite", scratch / "job"])
        if outcome.returncode != 0:
            error = grade_model.error_file(out)
            why = outcome.describe() or (error.read_text()[:500] if error.is_file() else "")
            raise ValueError(f"captioning with the submitted model failed: {why or outcome.returncode}")
        line["metrics"] = grade_model.score_captions(out, prepared)
        line["earned"] = grade_model.table_points(table, line["metrics"])
    except (ValueError, FileNotFoundError, IsADirectoryError, RuntimeError) as error:
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
    """Check the options and add what the run decides: bwrap, threads, caches."""
    missing = [str(s) for s in options.submissions if not s.exists()]
    if missing:
        raise FileNotFoundError(f"no such submission: {', '.join(missing)}")
    if options.jobs < 1 or options.time_limit <= 0 or options.memory_gb <= 0:
        raise ValueError("--jobs, --time-limit and --memory-gb must be positive")
    if options.model_table:
        grade_model.parse_table(options.model_table)
    options.bwrap = None if options.no_sandbox else bwrap_path()
    options.threads = max(1, (os.cpu_count() or 1) // options.jobs)
    options.data_cache = {}
    options.lock = threading.Lock()
    similarity.enable(options)
    return options


def grade_command(args: argparse.Namespace) -> None:
    """Grade, write the CSV and the per-submission files, print a summary."""
    options = complete_options(args)
    print(sandbox_note(options.bwrap))
    digest = None if options.bwrap else grade_checks.tree_digest(grade_checks.REPO / "tests")
    grades = grade_batch(options.submissions, options)
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
    if digest and grade_checks.tree_digest(grade_checks.REPO / "tests") != digest:
        print("WARNING: the repository's tests/ changed during grading "
              "(without a sandbox a submission can write there; or someone edited them meanwhile)")
    print(f"wrote {options.out} and {folder}/NAME/feedback.txt, results.json")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit code (0, 1 for bad input, 2 for bad options)."""
    return run_command(build_parser(), grade_command, argv)


if __name__ == "__main__":
    sys.exit(main())
