"""
The handed-in notebook, for helper.grade: does it reproduce the reference
notebook's checked cells when run against the submission's module?

On the grader's terms:
- The points count the reference notebook's checked cells (code cells
  without NBVAL_SKIP or NBVAL_IGNORE_OUTPUT). Each must be in the student's
  notebook (matched by cell id, else by its source) with its source
  unchanged; it is then run and its output compared with the REFERENCE's
  stored output (what a correct solution prints), never with the student's.
  A checked cell that is missing or altered is not reproduced.
- The student's other cells run (their state matters to the next cells),
  their outputs ignored; a cell that matches a cell the reference skips is
  skipped. Markers and tags the student added are not obeyed.
- The student's notebook is untrusted JSON: it is read by a child process
  with the sandbox's limits (`python grade_notebook.py prepare ...`, this
  file run on its own), which writes the notebook nbval runs.
- The kernel runs in the sandbox (helper.grading.sandbox; the grade plugin
  starts it there, connected through Unix sockets, since the sandbox has no
  network), with the submission's module, the kit's helper/ and the data
  sets, read-only but for its own folder. pytest and nbval, which compare
  the outputs and report them, run outside it.
Streams are sanitised (timings, rates, memory addresses, progress bars,
devices) and stderr is not compared (grade_plugin). Points: the share of
reproduced cells among the reference's checked cells, times
--notebook-points (0 switches the line off).
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from helper.grading.sandbox import Limits, run_limited
from helper.instructor import notebook_cells
from helper.instructor.handin import MODULE
from helper.instructor.release import helper_files

REPO = Path(__file__).resolve().parents[2]
MAX_REPORT_BYTES = 1 << 20

SANITIZE = r"""
[timings]
regex: \d+(\.\d+)?\s*(ms|s|sec|seconds|min|minutes|h)\b
replace: TIME
[rates]
regex: \d+(\.\d+)?\s*(it/s|s/it|images/s|img/s|captions/s)
replace: RATE
[addresses]
regex: 0x[0-9a-fA-F]+
replace: ADDRESS
[devices]
regex: \b(cuda(:\d+)?|cpu|mps)\b
replace: DEVICE
[progress]
regex: \d+%\|[^\n]*
replace: PROGRESS
"""


def nbval_command(python: str, notebook: Path, sanitize: Path, cell_timeout: int) -> List[str]:
    """The pytest --nbval command line."""
    return [
        python, "-m", "pytest", "-c", str(notebook.parent / "pytest.ini"), "--rootdir", str(notebook.parent),
        "-p", "helper.instructor.grade_plugin", "--nbval", "--nbval-current-env",
        "--nbval-sanitize-with", str(sanitize), "--nbval-cell-timeout", str(cell_timeout),
        "-q", "--tb=no", "-rN", "-p", "no:cacheprovider", "-o", "addopts=", str(notebook),
    ]


def clean_message(text: str) -> str:
    """nbval's failure text without colours and without the cell's source: 'Cell N: why' and the details."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = text.splitlines()
    header = next((line for line in lines if line.startswith("Cell ")), "")
    details = text.split("Traceback:", 1)[1] if "Traceback:" in text else ""
    kept = [line for line in details.strip("\n").splitlines() if line.strip()][-12:]
    return "\n".join([header] + kept).strip() or "\n".join(lines[-12:]).strip()


def score_cells(cells: List[dict], runs: list) -> List[dict]:
    """
    Inputs:
    - cells: prepare_notebook's "cells" (the reference's checked cells)
    - runs: the records (outcome, message) of the nbval run, one per code cell of the prepared notebook

    Returns:
    - per checked cell {"cell", "status", "message"}; status reproduced,
      differs, fails, not run, missing, altered
    """
    scored = []
    for cell in cells:
        status, message = cell["status"], ""
        if status == "present":
            run = runs[cell["run"]] if cell["run"] is not None and cell["run"] < len(runs) else None
            if run is None or run.outcome == "not run":
                status = "not run"
            elif run.outcome == "passed":
                status = "reproduced"
            else:
                status = "differs" if "outputs differ" in run.message else "fails"
                message = clean_message(run.message)
        scored.append({"cell": cell["cell"], "status": status, "message": message})
    return scored


def notebook_points(cells: List[dict], points: float) -> float:
    """points times the share of reproduced cells among the reference's checked cells."""
    if not cells or points <= 0:
        return 0.0
    return points * sum(c["status"] == "reproduced" for c in cells) / len(cells)


def _writable(folder: Path) -> Path:
    """A new folder that the sandbox's user may write."""
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    return folder


def _prepare(files: dict, scratch: Path, options, uid: Optional[int]) -> dict:
    """Run notebook_cells.py on the student's notebook in the sandbox; its report, checked here."""
    inputs = scratch / "nb-in"
    inputs.mkdir()
    shutil.copyfile(files["notebook"], inputs / "submitted.ipynb")
    shutil.copyfile(options.reference_notebook, inputs / "reference.ipynb")
    shutil.copyfile(notebook_cells.__file__, inputs / "notebook_cells.py")
    for path in inputs.iterdir():
        path.chmod(0o644)
    inputs.chmod(0o755)
    out = _writable(scratch / "nb-prepared")
    target, report = out / "notebook.ipynb", out / "report.json"
    limits = Limits(seconds=120, memory_bytes=2 << 30, file_bytes=64 << 20)
    outcome = run_limited([sys.executable, "-I", str(inputs / "notebook_cells.py"), str(inputs / "submitted.ipynb"),
                           str(inputs / "reference.ipynb"), str(target), str(report)], inputs, {"LANG": "C.UTF-8"},
                          limits, scratch / "out" / "prepare.log", options.bwrap, readable=[inputs], writable=[out],
                          uid=uid)
    if outcome.describe() or not report.is_file() or report.stat().st_size > MAX_REPORT_BYTES:
        raise ValueError(f"the notebook cannot be read ({outcome.describe() or 'no report'})")
    result = json.loads(report.read_text())
    if "error" in result:
        raise ValueError(str(result["error"])[:500])
    cells = result.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) and c.get("status") in
                                              ("present", "missing", "altered") for c in cells):
        raise ValueError("the notebook cannot be read (a malformed report)")
    result["target"] = target
    return result


def grade_notebook(files: dict, scratch: Path, options, uid: Optional[int]) -> dict:
    """
    The notebook line (see the module docstring).

    Inputs:
    - files: the hand-in's files (helper.instructor.handin.unpack)
    - scratch: the submission's scratch folder (the grader's)
    - options: the grader's options (reference_notebook, notebook_points, cell_timeout, time_limit,
      memory_gb, bwrap, threads)
    - uid: the sandbox's user

    Returns:
    - {"points", "earned", "cells": [per checked cell of the reference], "added_markers", "reason"}
    """
    from helper.instructor import grade_plugin

    line = {"points": options.notebook_points, "earned": 0.0, "cells": [], "added_markers": [], "reason": ""}
    try:
        prepared = _prepare(files, scratch, options, uid)
    except ValueError as error:
        line["reason"] = str(error)
        return line
    ensure_notebook_data(options)
    # The kernel's folder: the module, the kit's helper/, the notebook; it writes here (runs/, plots).
    folder = _writable(scratch / "nb-run")
    shutil.copyfile(files["module"], folder / MODULE)
    for path in helper_files(REPO):
        target = folder / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for path in [*folder.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    # The judge's own folder, which the kernel cannot reach: the notebook it runs, its settings, its records.
    # (pytest would load a conftest.py or an ini file beside the notebook: none can be planted here.)
    judge = scratch / "out" / "notebook"
    judge.mkdir()
    shutil.copyfile(prepared["target"], judge / "notebook.ipynb")
    (judge / "pytest.ini").write_text("[pytest]\n")
    sanitize = scratch / "out" / "nbval_sanitize.cfg"
    sanitize.write_text(SANITIZE)
    events = scratch / "out" / "notebook.jsonl"
    connection = scratch / "nb-connection"
    connection.mkdir(mode=0o755)
    kernel = {"bwrap": options.bwrap, "uid": uid, "folder": str(folder), "sockets": str(_writable(scratch / "nb-sock")),
              "connection": str(connection),
              "data_dir": str(data_dir()), "memory_bytes": int(options.memory_gb * (1 << 30)),
              "seconds": options.time_limit, "threads": options.threads}
    # The judge (pytest and nbval) runs here, outside the sandbox; only the kernel runs inside.
    env = {**os.environ, "GRADE_EVENTS": str(events), "GRADE_TEST_TIMEOUT": str(options.cell_timeout + 30),
           grade_plugin.KERNEL_ENV: json.dumps(kernel), "JUPYTER_RUNTIME_DIR": str(_writable(scratch / "nb-runtime")),
           "PYTHONPATH": str(REPO)}
    command = nbval_command(sys.executable, judge / "notebook.ipynb", sanitize, options.cell_timeout)
    outcome = run_limited(command, judge, env, Limits(seconds=options.time_limit), scratch / "out" / "notebook.log")
    runs = grade_plugin.records(events)
    line["cells"] = score_cells(prepared["cells"], runs)
    line["added_markers"] = [tuple(m) for m in prepared.get("added_markers", [])][:50]
    line["earned"] = notebook_points(line["cells"], options.notebook_points)
    reasons = [f"the notebook run {outcome.describe()}"] if outcome.describe() else []
    lost = [c["cell"] for c in line["cells"] if c["status"] in ("missing", "altered")]
    if lost:
        reasons.append(f"{len(lost)} of the reference's {len(line['cells'])} checked cells are missing or altered")
    if line["added_markers"]:
        reasons.append(f"{len(line['added_markers'])} nbval markers added by the student were not obeyed")
    line["reason"] = "; ".join(reasons)
    return line


def data_dir() -> Path:
    """The data sets' folder the notebooks load from (read-only in the sandbox)."""
    return Path(os.environ.get("CAPTIONING_DATA_DIR", str(REPO / "datasets")))


def ensure_notebook_data(options) -> None:
    """
    Generate the "shapes" data once, here, when its cache is missing: the
    notebooks load it, and inside the sandbox the data folder is read-only.
    """
    if options.notebook_data != "shapes":
        return
    with options.lock:
        if not any(data_dir().glob("shapes-*.h5")):
            from helper.data.datasets import load_dataset

            load_dataset("shapes", data_dir=data_dir())
