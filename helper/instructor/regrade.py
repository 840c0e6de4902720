"""
Regrades, for helper.grade (--regrade OLD.csv): what changed between an
earlier grading of a batch and this one, per student and per check, and the
stamp that ties every grade to the suite that produced it.

- The suite is what decides points (SUITE: the graded tests, their helpers
  tests/*.py, the rubric, the grading engine). suite_stamp() hashes it: a
  digest (the CSV's "suite" column, results.json's extra_data) and one hash
  per file (results.json's extra_data), so that a regrade names the files
  that changed.
- read_previous() reads the earlier CSV and, in the folder next to it, each
  submission's results.json (its checks), before anything is written again.
- carry_over() keeps what the instructor wrote into the earlier CSV: the
  "adjustment" column (points added to the total in the LMS export) and any
  column of their own.
- changes() compares: a student is listed when their points or status
  changed, with each check whose points changed, old and new, and why
  (re-weighted, now passed, now failed and the new failure, added, removed).
  write_changes() writes NAME-regrade.csv and NAME-regrade.txt next to the CSV.
"""
import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from helper.common.files import atomic_output
from helper.instructor import grade_report

REPO = Path(__file__).resolve().parents[2]
# What decides points: (folder, glob) pairs under the repository (or a Gradescope package's source).
SUITE = (("tests/grading", "**/*"), ("tests", "conftest.py"), ("tests", "_*.py"), ("helper/kit", "rubric.py"),
         ("helper/grading", "**/*"))


def suite_files(root: Path = REPO) -> Dict[str, str]:
    """{path under root: the first 16 hex digits of its SHA-256} of the suite's files (no caches)."""
    found = {}
    for folder, pattern in SUITE:
        for path in sorted((root / folder).glob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return dict(sorted(found.items()))


def suite_stamp(root: Path = REPO) -> dict:
    """
    The stamp of the suite under root.

    Returns:
    - {"digest": 16 hex digits over every file's path and hash, "files": suite_files(root)}
    """
    files = suite_files(root)
    digest = hashlib.sha256("".join(f"{name}\0{sha}\n" for name, sha in files.items()).encode()).hexdigest()[:16]
    return {"digest": digest, "files": files}


@dataclass
class Previous:
    """One student's row of the earlier grading, and its checks when its results.json was found."""

    row: Dict[str, str]
    checks: Dict[str, Tuple[float, float, str]] = field(default_factory=dict)  # name -> (score, max, output)
    suite_files: Dict[str, str] = field(default_factory=dict)
    detailed: bool = False  # its results.json was read


def read_previous(csv_path: Path) -> Dict[str, Previous]:
    """
    The earlier grading: its CSV and the results.json files in the folder
    next to it (helper.grade's layout). ValueError when it is not a CSV of
    helper.grade.

    Returns:
    - {student name: Previous}
    """
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"name", "total"} <= set(rows[0]):
        raise ValueError(f"{csv_path} is not a grades CSV of helper.grade (it needs the columns name and total)")
    previous = {}
    for row in rows:
        entry = Previous(row=row)
        results = csv_path.with_suffix("") / row["name"] / "results.json"
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
            entry.checks = {t["name"]: (float(t.get("score", 0)), float(t.get("max_score", 0)),
                                        str(t.get("output", ""))) for t in data.get("tests", [])}
            entry.suite_files = dict(data.get("extra_data", {}).get("suite_files", {}))
            entry.detailed = True
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        previous[row["name"]] = entry
    return previous


def carry_over(previous: Dict[str, Previous], grades: List[dict]) -> None:
    """Copy the "adjustment" column and the instructor's own columns of the earlier CSV into the grades."""
    known = set(grade_report.csv_columns())
    for grade in grades:
        old = previous.get(grade["name"])
        if old is None:
            continue
        grade["adjustment"] = old.row.get("adjustment") or ""
        grade["carried"] = {k: v or "" for k, v in old.row.items() if k and k not in known}


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:160]


def check_change(name: str, old: Optional[tuple], new: Optional[tuple]) -> Optional[dict]:
    """
    One check's change, or None when its points did not change.

    Inputs:
    - name: the check's name in results.json
    - old, new: (score, max_score, output), None where the check did not exist

    Returns:
    - {"check", "old", "new", "old_max", "new_max", "why"}
    """
    old_score, old_max, old_output = old or (0.0, 0.0, "")
    new_score, new_max, new_output = new or (0.0, 0.0, "")
    if old is not None and new is not None and round(old_score, 4) == round(new_score, 4):
        return None
    if old is None or new is None:
        if old_score == new_score:
            return None
        why = "a new check" if old is None else "the check was removed"
    elif round(old_max, 4) != round(new_max, 4):
        why = f"re-weighted: worth {old_max:g} -> {new_max:g}"
    elif new_score > old_score:
        why = "now passed" + (f" (was: {_first_line(old_output)})" if old_output != "passed" else "")
    else:
        why = f"now failed: {_first_line(new_output)}"
    return {"check": name, "old": old_score, "new": new_score, "old_max": old_max, "new_max": new_max, "why": why}


def _part_changes(old_row: Dict[str, str], grade: dict) -> List[dict]:
    """Per-part changes, from the CSV alone (an earlier grading without its results.json files)."""
    new_row = grade_report.csv_row(grade)
    found = []
    for key in [p for p in grade_report.csv_columns() if p in grade["parts"]] + ["notebook", "model"]:
        old, new = _number(old_row.get(key)), _number(new_row.get(key))
        if (old or 0.0) != (new or 0.0):
            found.append({"check": f"part {key}", "old": old or 0.0, "new": new or 0.0, "old_max": 0.0,
                          "new_max": 0.0, "why": "per-check detail unknown: no results.json next to the old CSV"})
    return found


def _number(text) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def student_change(old: Previous, grade: dict) -> Optional[dict]:
    """What changed for one student (None when neither their points nor their status did)."""
    if old.detailed:
        new_checks = {t["name"]: (t["score"], t["max_score"], t["output"]) for t in grade_report.result_tests(grade)}
        names = list(dict.fromkeys([*old.checks, *new_checks]))
        checks = [c for c in (check_change(n, old.checks.get(n), new_checks.get(n)) for n in names) if c]
    else:
        checks = _part_changes(old.row, grade)
    old_total, new_total = _number(old.row.get("total")) or 0.0, round(grade["total"], 2)
    old_status = old.row.get("status", "")
    if not checks and round(old_total, 2) == new_total and old_status == grade["status"]:
        return None
    return {"name": grade["name"], "old_total": old_total, "new_total": new_total, "old_status": old_status,
            "new_status": grade["status"], "adjustment": grade.get("adjustment", ""),
            "old_suite": old.row.get("suite", ""), "new_suite": grade.get("suite", {}).get("digest", ""),
            "checks": checks}


def changes(previous: Dict[str, Previous], grades: List[dict]) -> dict:
    """
    The regrade's report.

    Returns:
    - {"students": [student_change of each changed student, by name], "added": [names graded now only],
       "missing": [names of the earlier grading not graded now], "suite_files": [suite files that changed]}
    """
    by_name = {g["name"]: g for g in grades}
    students = [c for c in (student_change(previous[n], by_name[n]) for n in sorted(by_name) if n in previous) if c]
    new_files = grades[0].get("suite", {}).get("files", {}) if grades else {}
    old_files = next((p.suite_files for p in previous.values() if p.suite_files), {})
    changed_files = sorted(n for n in {*old_files, *new_files} if old_files.get(n) != new_files.get(n))
    changed_files = changed_files if old_files else []  # an earlier grading without its files' hashes: unknown
    return {"students": students, "added": sorted(set(by_name) - set(previous)),
            "missing": sorted(set(previous) - set(by_name)), "suite_files": changed_files}


def _check_text(check: dict) -> str:
    return f"{check['check']}: {check['old']:g} -> {check['new']:g} ({check['why']})"


def report_text(report: dict) -> str:
    """The regrade's report for people: the suite's changed files, then each changed student."""
    lines = [f"Regrade: {len(report['students'])} students changed"]
    if report["suite_files"]:
        lines.append("Suite files changed since the earlier grading: " + ", ".join(report["suite_files"]))
    for student in report["students"]:
        lines += ["", f"{student['name']}: {student['old_total']:.2f} -> {student['new_total']:.2f}"
                  + (f" (status {student['old_status']} -> {student['new_status']})"
                     if student["old_status"] != student["new_status"] else "")
                  + (f", adjustment {student['adjustment']} kept" if student["adjustment"] else "")
                  + (f", suite {student['old_suite'] or 'unknown'} -> {student['new_suite']}"
                     if student["old_suite"] != student["new_suite"] else "")]
        lines += [f"  - {_check_text(c)}" for c in student["checks"]]
    if report["added"]:
        lines += ["", "Graded now only: " + ", ".join(report["added"])]
    if report["missing"]:
        lines += ["", "In the earlier grading only (not regraded): " + ", ".join(report["missing"])]
    return "\n".join(lines) + "\n"


REGRADE_COLUMNS = ["name", "old_total", "new_total", "change", "old_status", "new_status", "adjustment", "old_suite",
                   "new_suite", "checks"]


def write_changes(report: dict, out_csv: Path) -> Tuple[Path, Path]:
    """NAME-regrade.csv (one row per changed student) and NAME-regrade.txt next to the CSV; their paths."""
    table, text = (out_csv.with_name(f"{out_csv.stem}-regrade{suffix}") for suffix in (".csv", ".txt"))
    with atomic_output(table) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=REGRADE_COLUMNS)
            writer.writeheader()
            for s in report["students"]:
                writer.writerow({**{k: s[k] for k in REGRADE_COLUMNS if k in s},
                                 "old_total": f"{s['old_total']:.2f}", "new_total": f"{s['new_total']:.2f}",
                                 "change": f"{s['new_total'] - s['old_total']:+.2f}",
                                 "checks": "; ".join(_check_text(c) for c in s["checks"])})
    with atomic_output(text) as tmp:
        tmp.write_text(report_text(report), encoding="utf-8")
    return table, text
