"""
The student's notebook, read as untrusted JSON: which of the reference
notebook's checked cells it has unchanged, and the notebook that nbval runs
(helper.instructor.grade_notebook says the policy).

It imports nothing but the standard library, so that the grader runs this
file on its own in the sandbox, with its limits:

    python notebook_cells.py SUBMITTED REFERENCE TARGET REPORT

writes TARGET (the notebook to run) and REPORT (prepare_notebook's result as
JSON); exit status 1 and REPORT {"error": why} for a notebook that cannot be read.
"""
import json
import sys
from pathlib import Path
from typing import Dict, List

MARKERS = ("NBVAL_SKIP", "NBVAL_IGNORE_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_CHECK_OUTPUT",
           "PYTEST_VALIDATE_IGNORE_OUTPUT")
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


def _normal(source: str) -> str:
    """A cell's source without markers, trailing spaces and blank lines at its ends (what "unchanged" means)."""
    lines = [line.rstrip() for line in source.splitlines() if line.strip().lstrip("#").strip() not in MARKERS]
    return "\n".join(lines).strip()


def prepare_notebook(submitted: Path, reference: Path, target: Path) -> Dict[str, object]:
    """
    Write the notebook nbval runs (see the module docstring).

    Inputs:
    - submitted: the student's notebook
    - reference: the reference notebook
    - target: the notebook to write

    Returns:
    - {"cells": [{"cell": number among the reference's checked cells, "status": "present", "missing" or
      "altered"}], "markers": [the markers each code cell of target runs with], "added_markers": [(cell, marker)]}

    Raises ValueError for a notebook that is not JSON of nbformat 4.
    """
    try:
        notebook = json.loads(submitted.read_text(encoding="utf-8"))
        cells = [c for c in notebook["cells"] if isinstance(c, dict) and c.get("cell_type") == "code"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"the notebook cannot be read ({type(error).__name__}: {error})") from None
    ours = [c for c in json.loads(reference.read_text(encoding="utf-8"))["cells"] if c.get("cell_type") == "code"]
    checked = [c for c in ours if not set(cell_markers(_source(c))) & {"NBVAL_SKIP", "NBVAL_IGNORE_OUTPUT"}]
    by_id = {c.get("id"): c for c in ours if c.get("id")}
    by_source = {_normal(_source(c)): c for c in ours}
    status = {id(c): "missing" for c in checked}
    runs = {}  # reference cell -> its position in the prepared notebook
    prepared, markers, added = [], [], []
    for number, cell in enumerate(cells):
        source = _source(cell)
        match = by_source.get(_normal(source)) or by_id.get(cell.get("id"))
        added += [(number, m) for m in cell_markers(source) if match is None or m not in cell_markers(_source(match))]
        if match is not None and id(match) in status and _normal(source) == _normal(_source(match)):
            status[id(match)] = "present"
            runs[id(match)] = len(prepared)
            prepared.append({**match, "metadata": {}})  # the reference's source and stored outputs
            markers.append([])
            continue
        if match is not None and id(match) in status and status[id(match)] == "missing":
            status[id(match)] = "altered"
        wanted = ["NBVAL_SKIP"] if match is not None and "NBVAL_SKIP" in cell_markers(_source(match)) else [
            "NBVAL_IGNORE_OUTPUT"]
        lines = [line for line in source.splitlines(keepends=True) if line.strip().lstrip("#").strip() not in MARKERS]
        prepared.append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                         "source": "".join(f"# {m}\n" for m in wanted) + "".join(lines)})
        markers.append(wanted)
    for cell in prepared:
        cell.pop("id", None)
    out = {"cells": prepared, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}}, "nbformat": 4, "nbformat_minor": 4}
    target.write_text(json.dumps(out), encoding="utf-8")
    return {"cells": [{"cell": i, "status": status[id(c)], "run": runs.get(id(c))} for i, c in enumerate(checked)],
            "markers": markers, "added_markers": added}


def main(argv: List[str]) -> int:
    """The command line of the module docstring."""
    submitted, reference, target, report = (Path(a) for a in argv)
    try:
        result = prepare_notebook(submitted, reference, target)
    except ValueError as error:
        report.write_text(json.dumps({"error": str(error)[:500]}))
        return 1
    report.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
