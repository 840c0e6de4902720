"""
The batch grader on Gradescope: its autograder package, and what the
package runs there.

    python -m helper.gradescope OUT.zip [--grade-options "--notebook-points 0"] [--other-visibility hidden] ...

builds the zip of Gradescope's autograder specification: setup.sh and
run_autograder at its top (helper/instructor/gradescope_files/), and what
they need: helper/, the graded checks (tests/grading, their helpers tests/*.py,
tests/beyond unless --no-beyond), pytest.ini, requirements.txt, the reference
notebook when the notebook is graded, a --model-data file, and
gradescope.json (the settings below and the suite's stamp). It holds no
solution: not the reference module, not tests/solutions, not the kit's tests.

On Gradescope's machine, as root (setup.sh and run_autograder call these):

    python -m helper.instructor.gradescope setup --source /autograder/source
    python -m helper.instructor.gradescope run --root /autograder

`setup` checks the interpreter and the pinned packages, the suite's digest
and the sandbox, makes the grader's data set once and records the
interpreter for run_autograder. `run` grades /autograder/submission with
helper.grade's engine (grade_submission: the same judge, sandbox, notebook
and model scoring; the sandbox holds neither /autograder/source nor
/autograder/results) and writes /autograder/results/results.json
(helper.instructor.grade_report.gradescope_results). A valid results.json is
there from the start ("did not finish") and replaced at the end; a grading
that runs past the package's deadline is stopped, and the checks that
finished keep their points.
"""
import argparse
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from helper.common.cli import run_command
from helper.common.files import atomic_output
from helper.grading.results import checks_from_grade, summarize_parts
from helper.grading.sandbox import SandboxUnavailable, sandbox_note, sandbox_problem
from helper.instructor import grade, grade_model, regrade
from helper.instructor.grade_report import PUBLIC_COUNTERPARTS, VISIBILITIES, Visibility, feedback_text, \
    gradescope_results
from helper.instructor.handin import MODULE, NOTEBOOK
from helper.kit.rubric import TOTAL_POINTS

REPO = Path(__file__).resolve().parents[2]
FILES = Path(__file__).with_name("gradescope_files")
CONFIG = "gradescope.json"
NAME = "submission"
DATA_FOLDER = "grader-data"  # files named by --model-data / --reference-notebook, copied into the package
RUNNER_OPTIONS = ("--out", "--jobs", "--no-progress", "--no-similarity", "--regrade", "--keep-scratch")


# ---------------------------------------------------------------------------
# The package


def package_files(repo: Path, options: argparse.Namespace) -> Dict[str, Path]:
    """{path in the zip: file here} of the grader's files (module docstring), without gradescope.json."""
    files = {}
    trees = ["helper", "tests/grading"] + ([] if options.no_beyond else ["tests/beyond"])
    for tree in trees:
        for path in sorted((repo / tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[path.relative_to(repo).as_posix()] = path
    for path in [repo / "tests" / "conftest.py", *sorted((repo / "tests").glob("_*.py"))]:
        files[path.relative_to(repo).as_posix()] = path
    for name in ("pytest.ini", "requirements.txt"):
        files[name] = repo / name
    if options.notebook_points > 0 and Path(options.reference_notebook).resolve() == (repo / NOTEBOOK).resolve():
        files[NOTEBOOK] = repo / NOTEBOOK
    files.update({name: FILES / name for name in ("setup.sh", "run_autograder")})
    return files


def _carry_data(grade_options: List[str], files: Dict[str, Path]) -> List[str]:
    """The grade options with each --model-data / --reference-notebook FILE replaced by its copy in the package."""
    options = [part for option in grade_options
               for part in (option.split("=", 1) if option.startswith("--") and "=" in option else [option])]
    for i, option in enumerate(options[:-1]):
        if option in ("--model-data", "--reference-notebook") and Path(options[i + 1]).is_file():
            name = f"{DATA_FOLDER}/{Path(options[i + 1]).name}"
            files[name], options[i + 1] = Path(options[i + 1]).resolve(), name
    return options


def check_grade_options(grade_options: List[str]) -> argparse.Namespace:
    """helper.grade's options as run_autograder will parse them; ValueError for a bad or reserved one."""
    reserved = [o for o in grade_options if o.split("=")[0] in RUNNER_OPTIONS]
    if reserved:
        raise ValueError(f"run_autograder sets {', '.join(reserved)} itself; leave them out of --grade-options")
    try:
        parsed = grade.build_parser().parse_args([NAME, *grade_options])
    except SystemExit:
        raise ValueError(f"helper.grade does not accept --grade-options {shlex.join(grade_options)!r}") from None
    if parsed.model_table:
        grade_model.parse_table(parsed.model_table)
    return parsed


def build_package(out: Path, config: dict, repo: Path = REPO) -> List[str]:
    """
    Write the autograder zip.

    Inputs:
    - out: the zip to write
    - config: {"grade_options": [...], "visibility": Visibility's fields, "deadline": seconds,
      "allow_no_sandbox": bool}; completed here with the suite's stamp and the data to make
    - repo: the repository whose grader is packed

    Returns:
    - the zip's member names
    """
    files: Dict[str, Path] = {}
    config = {**config, "grade_options": _carry_data(config["grade_options"], files)}
    parsed = check_grade_options(config["grade_options"])
    Visibility(**{k: tuple(v) if k == "public" else v for k, v in config["visibility"].items()})
    files.update(package_files(repo, parsed))
    wanted = {parsed.model_data if parsed.model_table else "", parsed.notebook_data if parsed.notebook_points else ""}
    config["make_data"] = sorted({"shapes"} & wanted)  # made once by setup.sh; a file is carried in the package
    config["suite"] = regrade.suite_stamp(repo)
    with atomic_output(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, path in sorted(files.items()):
                info = zipfile.ZipInfo.from_file(path, name)
                info.external_attr = (0o100755 if os.access(path, os.X_OK) else 0o100644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
            info = zipfile.ZipInfo(CONFIG, time.localtime()[:6])
            info.external_attr, info.compress_type = 0o100644 << 16, zipfile.ZIP_DEFLATED
            archive.writestr(info, json.dumps(config, indent=1) + "\n")
    return sorted([*files, CONFIG])


# ---------------------------------------------------------------------------
# setup.sh's Python part


def pinned_mismatches(requirements: Path) -> List[str]:
    """The NAME==VERSION lines of requirements.txt that the installed packages do not match."""
    from importlib import metadata

    wrong = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (s.strip() for s in line.split("==", 1))
            try:
                found = metadata.version(name)
            except metadata.PackageNotFoundError:
                found = "missing"
            if found.split("+")[0] != version:
                wrong.append(f"{name}=={version} (installed: {found})")
    return wrong


def setup(source: Path) -> None:
    """
    Check the machine for the package in source and prepare it (module
    docstring); RuntimeError naming what is wrong. Prints what it found.
    """
    config = json.loads((source / CONFIG).read_text())
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError(f"Python {sys.version.split()[0]}: the grader is checked with 3.11 (see setup.sh)")
    wrong = pinned_mismatches(source / "requirements.txt")
    if wrong:
        raise RuntimeError("installed packages differ from requirements.txt: " + ", ".join(wrong))
    digest = regrade.suite_stamp(source)["digest"]
    if digest != config["suite"]["digest"]:
        raise RuntimeError(f"the package's checks were changed after it was built (suite {digest}, built as "
                           f"{config['suite']['digest']}): build it again with python -m helper.gradescope")
    problem = sandbox_problem()
    print(f"sandbox: {problem or 'bubblewrap works'}"
          + (" (run_autograder will grade WITHOUT it: --allow-no-sandbox)" if problem and config["allow_no_sandbox"]
             else " (run_autograder will refuse to grade until it works)" if problem else ""))
    for name in config["make_data"]:
        from helper.data.datasets import load_dataset
        from helper.instructor.grade_notebook import data_dir

        load_dataset(name, data_dir=data_dir())
        print(f"data set {name!r} ready in {data_dir()}")
    (source / "autograder-python").write_text(sys.executable + "\n")
    print(f"setup done: Python {sys.version.split()[0]} at {sys.executable}, suite {digest}")


# ---------------------------------------------------------------------------
# run_autograder's Python part


def notice(text: str, config: Optional[dict] = None, seconds: float = 0.0) -> dict:
    """A results.json without checks, saying text (no points)."""
    return {"score": 0.0, "execution_time": int(seconds), "output": text, "visibility": "visible",
            "stdout_visibility": "hidden", "tests": [],
            "extra_data": {"suite_digest": (config or {}).get("suite", {}).get("digest", "")}}


def write_results(path: Path, results: dict) -> None:
    """results.json, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def hand_in(submission: Path) -> Path:
    """What to grade in Gradescope's submission folder: the folder, or the one zip it holds when it has no module."""
    if not submission.is_dir() or any(submission.rglob(MODULE)):
        return submission
    zips = sorted(submission.rglob("*.zip"))
    return zips[0] if len(zips) == 1 else submission


def runner_options(source: Path, work: Path, config: dict, package: Path) -> argparse.Namespace:
    """
    helper.grade's options for one submission (SandboxUnavailable when the
    sandbox does not work): source, the hand-in; work, a scratch folder;
    package, the unpacked package (whose data files the options name).
    """
    chosen = [str(package / o) if o.startswith(DATA_FOLDER + "/") else o for o in config["grade_options"]]
    argv = [str(source), "--out", str(work / "grades.csv"), *chosen, "--jobs", "1", "--no-progress", "--no-similarity"]
    options = grade.build_parser().parse_args(argv)
    if config.get("allow_no_sandbox") and sandbox_problem():
        options.no_sandbox = True
    return grade.complete_options(options)


def stopped_grade(options, seconds: float) -> dict:
    """The grade of a grading stopped at the deadline: the checks in the judge's grade file so far."""
    stopped = grade.empty_grade(NAME, options)
    checks = []
    for path in sorted(Path(tempfile.gettempdir()).glob(f"grade-{NAME}-*/out/grade.json")):
        try:
            checks = checks_from_grade(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    stopped.update(checks=checks, parts=summarize_parts(checks), status="time-out", seconds=seconds,
                   reason=f"grading ran past the autograder's time limit ({seconds:.0f} s) and was stopped; "
                          f"the checks that finished count")
    stopped["total"], stopped["max_total"] = sum(p["earned"] for p in stopped["parts"].values()), TOTAL_POINTS
    return stopped


def kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs (the judge runs in a session of its own)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def grade_with_deadline(source: Path, options, seconds: float) -> dict:
    """grade_submission, stopped after seconds (stopped_grade, every process it started killed)."""
    box = {}
    worker = threading.Thread(target=lambda: box.update(grade=grade.grade_submission(source, NAME, options)),
                              daemon=True)
    worker.start()
    worker.join(max(1.0, seconds))
    if "grade" in box:
        return box["grade"]
    stopped = stopped_grade(options, seconds)
    kill_descendants()
    return stopped


def run(root: Path) -> dict:
    """
    Grade root/submission as run_autograder does (module docstring).

    Returns:
    - the results written to root/results/results.json
    """
    start = time.monotonic()
    source, results_file = root / "source", root / "results" / "results.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.parent.chmod(0o700)
    config = json.loads((source / CONFIG).read_text())
    write_results(results_file, notice("The autograder started grading and did not finish (it was stopped). "
                                       "Please tell your instructor.", config))
    visibility = Visibility(**{k: tuple(v) if k == "public" else v for k, v in config["visibility"].items()})
    work = Path(tempfile.mkdtemp(prefix="gradescope-"))
    submission = root / "submission" if (root / "submission").exists() else work / "no-submission"
    submission.mkdir(exist_ok=True)
    try:
        options = runner_options(hand_in(submission), work, config, source)
    except SandboxUnavailable as error:
        print(f"not graded: {error}")
        results = notice("Your submission was not graded: the autograder's sandbox does not work on this machine. "
                         "Please tell your instructor (the autograder's output says why).", config)
        write_results(results_file, results)
        return results
    print(sandbox_note(options.bwrap))
    graded = grade_with_deadline(hand_in(submission), options, config["deadline"] - (time.monotonic() - start))
    results = gradescope_results(graded, visibility)
    results["extra_data"]["package_suite_digest"] = config["suite"]["digest"]
    write_results(results_file, results)
    print(feedback_text(graded))
    return results


# ---------------------------------------------------------------------------
# Command lines


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m helper.gradescope`."""
    p = argparse.ArgumentParser(prog="python -m helper.gradescope",
                                description="Build the Gradescope autograder package (a zip to upload).")
    p.add_argument("out", type=Path, help="the zip to write")
    p.add_argument("--grade-options", default="", help="options of helper.grade, one string "
                   "(e.g. \"--notebook-points 0 --model-table 'exact>=0.5:10'\")")
    p.add_argument("--public", action="append", metavar="PATTERN",
                   help="a public result (fnmatch of a check's test function or name, or notebook, model); "
                        "repeat; default: the graded checks with a counterpart in the kit's public self-check")
    p.add_argument("--public-visibility", default="visible", choices=VISIBILITIES, help="of the public results")
    p.add_argument("--other-visibility", default="after_due_date", choices=VISIBILITIES, help="of the others")
    p.add_argument("--results-visibility", default="visible", choices=VISIBILITIES,
                   help="of the whole result, score included (Gradescope's top-level setting)")
    p.add_argument("--deadline", type=float, default=1500,
                   help="seconds of grading per submission before it is stopped (keep it under Gradescope's timeout)")
    p.add_argument("--allow-no-sandbox", action="store_true",
                   help="where bubblewrap does not work on Gradescope, grade WITHOUT the sandbox (unsafe)")
    return p


def config_of(args: argparse.Namespace) -> dict:
    """The package's settings from the command line."""
    return {"grade_options": shlex.split(args.grade_options),
            "visibility": {"public": list(args.public or PUBLIC_COUNTERPARTS),
                           "public_visibility": args.public_visibility, "other_visibility": args.other_visibility,
                           "results_visibility": args.results_visibility},
            "deadline": args.deadline, "allow_no_sandbox": args.allow_no_sandbox}


def build_command(args: argparse.Namespace) -> None:
    """Build the package and say what it holds."""
    members = build_package(args.out, config_of(args))
    print(f"wrote {args.out}: {len(members)} files, suite {regrade.suite_stamp()['digest']}; upload it as the "
          f"assignment's autograder on Gradescope (README, 'Instructors')")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m helper.gradescope`: build the package; the exit code."""
    return run_command(build_parser(), build_command, argv)


def machine_main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m helper.instructor.gradescope setup|run`: on Gradescope's machine; the exit code."""
    p = argparse.ArgumentParser(prog="python -m helper.instructor.gradescope")
    p.add_argument("step", choices=("setup", "run"))
    p.add_argument("--source", type=Path, default=Path("/autograder/source"))
    p.add_argument("--root", type=Path, default=Path("/autograder"))
    args = p.parse_args(argv)
    if args.step == "setup":
        try:
            setup(args.source.resolve())
        except (RuntimeError, OSError, ValueError) as error:
            print(f"setup failed: {error}", file=sys.stderr)
            return 1
        return 0
    try:
        run(args.root)
    except Exception as error:  # noqa: BLE001 - the student must still get a results.json
        print(f"the autograder failed: {type(error).__name__}: {error}")
        write_results(args.root / "results" / "results.json",
                      notice(f"The autograder failed ({type(error).__name__}); your submission was not graded. "
                             "Please tell your instructor."))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(machine_main())
