"""
The handed-in notebook, for helper.grade: does it reproduce its own stored
outputs when run against the submission's module (`pytest --nbval`)?

Policy, so that outputs that legitimately vary are not held against a
student:
- Each code cell takes its nbval markers (NBVAL_SKIP, NBVAL_IGNORE_OUTPUT,
  NBVAL_RAISES_EXCEPTION, NBVAL_CHECK_OUTPUT) from the matching cell of OUR
  notebook (matched by cell id, else by position), never from the student's
  copy: our copy marks what varies with the machine (devices, training,
  timings) and skips the long training cells. A marker that the student's
  cell has and ours does not is reported as added to dodge a check, and not
  obeyed. Cells the student added (no match in ours) run, their outputs
  ignored: they are not part of the assignment.
- Streams are sanitised (timings, rates, memory addresses, progress bars,
  devices) and stderr is not compared (grade_plugin).
Each checked cell is "reproduced", "differs" (ran, other output) or "fails"
(raised, or timed out); marked cells are "skipped by a marker" or
"output ignored". Points: the notebook's share of reproduced cells among
the checked ones, times --notebook-points (0 switches the line off).

The notebook runs in the sandbox (its kernel is another process of the
same sandbox); pytest and nbval, which judge the outputs, run in a process
that the notebook's code never runs in.
"""
import json
import re
from pathlib import Path
from typing import Dict, List, Optional

MARKERS = ("NBVAL_SKIP", "NBVAL_IGNORE_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_CHECK_OUTPUT",
           "PYTEST_VALIDATE_IGNORE_OUTPUT")
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


def cell_markers(source: str) -> List[str]:
    """The nbval markers on comment lines of a cell's source."""
    found = []
    for line in source.splitlines():
        line = line.strip()
        if line.startswith("#") and line.lstrip("#").strip() in MARKERS:
            found.append(line.lstrip("#").strip())
    return found


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _match(cells: List[dict], reference: List[dict]) -> List[Optional[dict]]:
    """For each code cell, its reference code cell: by id, else by position among code cells."""
    by_id = {c.get("id"): c for c in reference if c.get("id")}
    codes = [c for c in reference if c.get("cell_type") == "code"]
    matched = []
    for position, cell in enumerate(cells):
        if cell.get("id") in by_id:
            matched.append(by_id[cell.get("id")])
        else:
            matched.append(codes[position] if not by_id and position < len(codes) else None)
    return matched


def prepare_notebook(submitted: Path, reference: Path, target: Path) -> Dict[str, object]:
    """
    Write the notebook nbval will run: the student's cells and stored
    outputs, with our markers (see the module docstring).

    Inputs:
    - submitted: the student's notebook
    - reference: our notebook (its markers)
    - target: the notebook to write

    Returns:
    - {"added_markers": [(cell number, marker)], "extra_cells": [cell numbers]}

    Raises ValueError for a notebook that is not JSON of nbformat 4.
    """
    try:
        notebook = json.loads(submitted.read_text(encoding="utf-8"))
        cells = [c for c in notebook["cells"] if c.get("cell_type") == "code"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"the notebook cannot be read ({type(error).__name__}: {error})") from error
    ours = json.loads(reference.read_text(encoding="utf-8"))["cells"]
    added, extra = [], []
    for number, (cell, match) in enumerate(zip(cells, _match(cells, ours))):
        own = cell_markers(_source(cell))
        wanted = cell_markers(_source(match)) if match is not None else ["NBVAL_IGNORE_OUTPUT"]
        if match is None:
            extra.append(number)
        added += [(number, m) for m in own if m not in wanted and match is not None]
        lines = [line for line in _source(cell).splitlines(keepends=True)
                 if line.strip().lstrip("#").strip() not in MARKERS]
        cell["source"] = "".join(f"# {m}\n" for m in wanted) + "".join(lines)
        cell.get("metadata", {}).pop("tags", None)  # nbval also reads markers from tags
    target.write_text(json.dumps(notebook), encoding="utf-8")
    return {"added_markers": added, "extra_cells": extra, "markers": [cell_markers(_source(c)) for c in cells]}


def nbval_command(python: str, notebook: Path, sanitize: Path, cell_timeout: int) -> List[str]:
    """The pytest --nbval command line."""
    return [
        python, "-m", "pytest", "-p", "helper.instructor.grade_plugin", "--nbval", "--nbval-current-env",
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


def classify_cells(checks, markers: List[List[str]]) -> List[dict]:
    """
    Inputs:
    - checks: the Check records of the nbval run, in cell order
    - markers: the markers each code cell ran with

    Returns:
    - per cell {"cell", "status", "message"}; status reproduced, differs,
      fails, skipped by a marker, output ignored, not run
    """
    cells = []
    for number, check in enumerate(checks):
        marks = markers[number] if number < len(markers) else []
        if check.outcome == "skipped":
            status = "skipped by a marker"
        elif check.outcome == "passed":
            status = "output ignored" if "NBVAL_IGNORE_OUTPUT" in marks else "reproduced"
        elif check.outcome == "not run":
            status = "not run"
        else:
            status = "differs" if "outputs differ" in check.message else "fails"
        message = clean_message(check.message) if status in ("differs", "fails") else ""
        cells.append({"cell": number, "status": status, "message": message})
    return cells


def notebook_points(cells: List[dict], points: float) -> float:
    """points times the share of reproduced cells among the checked ones."""
    checked = [c for c in cells if c["status"] in ("reproduced", "differs", "fails", "not run")]
    if not checked or points <= 0:
        return 0.0
    return points * sum(c["status"] == "reproduced" for c in checked) / len(checked)
