"""
The students' self-check, as `python -m helper.selfcheck [--module FILE]`.

Runs the public checks (helper/kit/public_checks*.py) on rnn_lstm_captioning.py,
part by part, and shows which parts pass them and the points of those parts
(from helper/kit/rubric.py). These are public checks, not the grade: the grader
runs more checks on the same functions.

The module runs in a worker process of the grading engine (helper.grading,
as for the grader), one per part, each call with a time limit, so nothing
the module does (a syntax error, an exception, NotImplementedError, None
returned, an endless loop, sys.exit, a crash) stops the self-check; each
check is reported as one of
    pass   the code gave what was expected
    todo   not written yet (NotImplementedError, or None returned)
    fail   the code ran but gave a wrong result (what was expected is shown)
    error  the code raised an exception (its type, message and line)
    stop   the check crashed its process or ran out of time (the next check gets a new one)
A part passes when all its checks pass; its points count only then.
The exit code is 0 when every part passes, 1 otherwise.
"""
import argparse
import json
import os
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence

from helper.common.utils import import_file
from helper.grading.remote import RemoteError, Worker, WorkerLost
from helper.kit import rubric

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODULE = ROOT / "rnn_lstm_captioning.py"
DEFAULT_TIMEOUT = 300.0
STATUS_ORDER = ("pass", "todo", "fail", "error", "stop")


# ------------------------------------------------------------------ in the worker process
def _where(error: BaseException, path: Path) -> str:
    """' (rnn_lstm_captioning.py, line N, in f)' for the innermost frame in the student's file, or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" ({path.name}, line {frames[-1].lineno}, in {frames[-1].name})" if frames else ""


def _outcome(function, module, path: Path) -> dict:
    """Run one check; its status and detail."""
    from helper.kit.check_tools import CheckFailed, NotWritten

    try:
        function(module)
        return {"status": "pass", "detail": ""}
    except NotWritten as error:
        return {"status": "todo", "detail": str(error)}
    except NotImplementedError as error:
        return {"status": "todo", "detail": f"{error or 'NotImplementedError'}{_where(error, path)}"}
    except CheckFailed as error:
        return {"status": "fail", "detail": str(error)}
    except (Exception, SystemExit) as error:  # the student's code crashed or exited: report it, go on
        return {"status": "error", "detail": f"{type(error).__name__}: {error}{_where(error, path)}"}


def run_check(module, part_key: str, name: str) -> dict:
    """In the worker (helper.grading.probes.public_check): the public check `name` of a part on the module."""
    import torch

    from helper.kit.public_checks import all_checks

    torch.set_num_threads(1)  # the parts run side by side, one per core
    function = dict(all_checks()[part_key])[name]
    return _outcome(function, module, Path(module.__file__))


# ------------------------------------------------------------------ in the student's process
def _run_part(module_path: Path, part: rubric.Part, timeout: float) -> dict:
    """
    The public checks of one part, in a worker process of the grading engine
    (helper.grading.remote) that imports the module: a check that crashes or
    hangs its worker is "stop", and the next check gets a new worker.
    """
    from helper.kit.public_checks import all_checks

    results = []
    worker = Worker(module_path, timeout=timeout, threads=1, code_root=ROOT, max_starts=len(all_checks()[part.key]))
    try:
        for name, _ in all_checks()[part.key]:
            try:
                outcome = worker.probe("public_check", part.key, name)
            except RemoteError as error:  # importing the module failed: every check of the part is blocked
                outcome = {"status": "error", "detail": f"cannot import {module_path.name}: {error.type_name}: "
                                                        f"{error.message}" + (f" ({error.where})" if error.where else "")}
            except WorkerLost as error:
                outcome = {"status": "stop", "detail": str(error)}
            results.append({"check": name, "status": str(outcome["status"]), "detail": str(outcome["detail"])})
    finally:
        worker.close()
    return {"key": part.key, "title": part.title, "points": part.points, "checks": results,
            "status": part_status(results), "earned": part.points if part_status(results) == "pass" else 0}


def part_status(results: List[dict]) -> str:
    """A part's status: "pass" when every check passes, else the most telling status among its checks."""
    statuses = {r["status"] for r in results}
    if statuses == {"pass"}:
        return "pass"
    for status in ("error", "stop", "fail", "todo"):
        if status in statuses:
            return status
    return "todo"


def selfcheck(module_path: Path = DEFAULT_MODULE, timeout: float = DEFAULT_TIMEOUT, jobs: Optional[int] = None,
              parts: Optional[Sequence[str]] = None) -> List[dict]:
    """
    Run the public checks of every part (or of the parts named) on a module.

    Inputs:
    - module_path: the rnn_lstm_captioning.py to check
    - timeout: seconds each check may take
    - jobs: parts run at once; the number of cores when None
    - parts: keys of the parts to check; all of helper.kit.rubric's when None

    Returns:
    - one dict per part: key, title, points, earned, status, and checks
      (a list of {"check", "status", "detail"})

    Raises ValueError when module_path is not a file or a part is unknown.
    """
    module_path = Path(module_path).resolve()
    if not module_path.is_file():
        raise ValueError(f"no module to check at {module_path}: expected your rnn_lstm_captioning.py")
    chosen = [rubric.part(key) for key in parts] if parts else list(rubric.PARTS)
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda part: _run_part(module_path, part, timeout), chosen))


LABEL = {"pass": "passes", "todo": "not written yet", "fail": "wrong results", "error": "raises an error",
         "stop": "stopped"}


def format_report(results: List[dict], module_path: Path) -> str:
    """The report a student reads: each part, each check that did not pass, the points, and what they mean."""
    lines = [f"Self-check of {module_path} (public checks only)", ""]
    for part in results:
        passed = sum(r["status"] == "pass" for r in part["checks"])
        lines.append(f"{part['earned']:>5g} / {part['points']:<4g} {part['key']:15s} {LABEL[part['status']]:16s} "
                     f"{passed} of {len(part['checks'])} checks pass   ({part['title']})")
        lines += [f"      {r['status']:5s}  {r['check']}: {r['detail']}" for r in part["checks"] if r["status"] != "pass"]
    earned = sum(part["earned"] for part in results)
    total = sum(part["points"] for part in results)
    lines += [
        "",
        f"Parts that pass their public checks: {earned:g} of {total:g} points"
        + ("" if total == rubric.TOTAL_POINTS else f" (of the assignment's {rubric.TOTAL_POINTS:g})") + ".",
        "These are the public checks only, not your grade: the grader runs more checks on the same",
        "functions (other sizes and inputs, more properties), so a part that passes here can still lose points.",
    ]
    return "\n".join(lines)


def record_expected(module_path: Path = DEFAULT_MODULE) -> Path:
    """
    Instructors: store the fixed values of the checks, computed by the reference
    module, in helper/kit/public_expected.py (after changing a check's inputs).

    Returns:
    - the path written
    """
    from helper.kit import check_tools
    from helper.kit.public_checks import all_checks

    check_tools.RECORD = True
    module = import_file(Path(module_path).resolve())
    for checks in all_checks().values():
        for name, function in checks:
            outcome = _outcome(function, module, Path(module_path))
            if outcome["status"] != "pass":
                raise ValueError(f"the reference module fails the check {name!r}: {outcome['detail']}")
    target = Path(__file__).with_name("public_expected.py")
    # One line per value, so that a change of the recording shows as a small diff.
    entries = "".join(f"    {json.dumps(key)}: {json.dumps(check_tools.RECORDING[key])},\n"
                      for key in sorted(check_tools.RECORDING))
    body = "{\n" + entries + "}"
    text = ('"""Fixed values of the public checks, recorded from the reference solution '
            '(python -m helper.selfcheck --record)."""\n' f"EXPECTED = {body}\n")
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helper.selfcheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--module", type=Path, default=DEFAULT_MODULE, help="the file to check (default: the kit's)")
    p.add_argument("--part", action="append", choices=[part.key for part in rubric.PARTS],
                   help="check only this part (repeatable)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per check (default 300)")
    p.add_argument("--jobs", type=int, default=None, help="parts checked at once (default: the number of cores)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--record", action="store_true", help=argparse.SUPPRESS)  # instructors: record_expected
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.record:
        print(f"wrote {record_expected(args.module)}")
        return 0
    try:
        results = selfcheck(args.module, args.timeout, args.jobs, args.part)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=1) if args.json else format_report(results, args.module.resolve()))
    return 0 if all(part["status"] == "pass" for part in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
