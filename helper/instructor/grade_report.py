"""
What helper.grade writes: the CSV of the batch, and per submission a
feedback text and a results.json in Gradescope's autograder format
({"score", "output", "tests": [{"name", "score", "max_score", "output"}]}).

A grade is a plain dict (helper.instructor.grade.grade_submission builds it):
    name, status, reason, parts {key: {"title", "points", "earned", ...}},
    checks [helper.grading.results.CheckResult], notebook {"points", "earned", "cells", "added_markers",
    "reason"} or None, model {"points", "earned", "metrics", "reason"} or None,
    total, max_total, sandbox, seconds.
All files are written under a temporary name and renamed (helper.data.atomic_output).
"""
import csv
import json
from pathlib import Path
from typing import List

from helper.common.files import atomic_output
from helper.kit.rubric import PARTS

def csv_columns() -> List[str]:
    """name, one column per rubric part, notebook, model, total, max_total, status, reason, sandbox."""
    return ["name"] + [p.key for p in PARTS] + ["notebook", "model", "total", "max_total", "status", "reason",
                                                "sandbox"]


def _points(value: float) -> str:
    return f"{value:.2f}"


def csv_row(grade: dict) -> dict:
    """One CSV row of a grade."""
    row = {"name": grade["name"], "status": grade["status"], "reason": grade["reason"],
           "sandbox": "bubblewrap" if grade["sandbox"].startswith("bubblewrap") else "NONE (--no-sandbox)"}
    for part in PARTS:
        row[part.key] = _points(grade["parts"][part.key]["earned"])
    row["notebook"] = _points(grade["notebook"]["earned"]) if grade.get("notebook") else ""
    row["model"] = _points(grade["model"]["earned"]) if grade.get("model") else ""
    row["total"], row["max_total"] = _points(grade["total"]), _points(grade["max_total"])
    return row


def write_csv(path: Path, grades: List[dict]) -> None:
    """The batch's CSV, one row per submission, sorted by name."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=csv_columns())
            writer.writeheader()
            for grade in sorted(grades, key=lambda g: g["name"]):
                writer.writerow(csv_row(grade))


def _failed_line(check) -> str:
    what = check.message.strip().replace("\n", "\n      ") or check.outcome
    return f"  - {check.name}: {what}"


def feedback_text(grade: dict) -> str:
    """The student's feedback: points per part, every failed check and what it expected."""
    lines = [f"Grade of {grade['name']}: {grade['total']:.2f} / {grade['max_total']:.2f}"]
    if not grade["sandbox"].startswith("bubblewrap"):
        lines.append(f"Graded without a sandbox: {grade['sandbox']}")
    if grade["reason"]:
        lines.append(f"Note: {grade['reason']}")
    lines.append("")
    checks = grade["checks"]
    for part in PARTS:
        summary = grade["parts"][part.key]
        lines.append(f"{part.title}: {summary['earned']:.2f} / {summary['points']:g} "
                     f"({summary['passed']} of {summary['tests']} checks passed)")
        failed = [c for c in checks if c.kind == "graded" and c.part == part.key and c.outcome != "passed"]
        lines += [_failed_line(c) for c in failed]
    beyond = [c for c in checks if c.kind == "beyond"]
    if beyond:
        passed = sum(c.outcome == "passed" for c in beyond)
        lines += ["", f"Beyond the assignment (reported, not graded): {passed} of {len(beyond)} checks passed"]
        lines += [_failed_line(c) for c in beyond if c.outcome != "passed"]
    notebook = grade.get("notebook")
    if notebook:
        lines += ["", f"Notebook: {notebook['earned']:.2f} / {notebook['points']:g}"
                  + (f" ({notebook['reason']})" if notebook.get("reason") else "")]
        for cell in notebook.get("cells", []):
            first = cell["message"].strip().splitlines()[:6]
            lines.append(f"  cell {cell['cell']}: {cell['status']}" + "".join(f"\n      {m}" for m in first))
        for number, marker in notebook.get("added_markers", []):
            lines.append(f"  cell {number}: you added the marker {marker}; it was not obeyed")
    model = grade.get("model")
    if model:
        lines += ["", f"Trained model: {model['earned']:.2f} / {model['points']:g}"
                  + (f" ({model['reason']})" if model.get("reason") else "")]
        if model.get("metrics"):
            lines.append("  " + ", ".join(f"{k} {v:.3f}" for k, v in model["metrics"].items()))
    lines += ["", "This grade has more checks than the public self-check of the kit."]
    return "\n".join(lines) + "\n"


def gradescope_results(grade: dict) -> dict:
    """The results.json of Gradescope's autograder specification."""
    tests = []
    for check in grade["checks"]:
        if check.kind not in ("graded", "beyond"):
            continue
        graded = check.kind == "graded"
        name = check.name if graded else f"[beyond the assignment, not graded] {check.name}"
        tests.append({
            "name": name,
            "score": round(check.earned, 4) if graded else 0,
            "max_score": round(check.points, 4) if graded else 0,
            "output": check.message if check.outcome != "passed" else "passed",
        })
    for key in ("notebook", "model"):
        extra = grade.get(key)
        if extra:
            tests.append({"name": f"{key}", "score": round(extra["earned"], 4), "max_score": extra["points"],
                          "output": extra.get("reason") or ""})
    return {
        "score": round(grade["total"], 4),
        "output": grade["reason"] or "graded",
        "tests": tests,
    }


def write_submission_files(folder: Path, grade: dict) -> None:
    """feedback.txt and results.json of one submission, in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / "feedback.txt") as tmp:
        tmp.write_text(feedback_text(grade), encoding="utf-8")
    with atomic_output(folder / "results.json") as tmp:
        tmp.write_text(json.dumps(gradescope_results(grade), indent=1), encoding="utf-8")
