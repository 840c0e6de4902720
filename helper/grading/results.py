"""
One result model for every grading command: a check, the parts of the
rubric, a submission.

The graded tests (`pytest tests/grading --grade-json FILE`) write the checks;
the batch grader reads them back from that file (written by the judge, a
process the submission never runs in) with `checks_from_grade`, and every
report (the CSV, the feedback text, Gradescope's results.json) is made from
these records.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

from helper.kit.rubric import PARTS

OUTCOMES = ("passed", "failed", "error", "skipped", "not run")


@dataclass
class CheckResult:
    """One check of a submission."""

    nodeid: str
    kind: str  # "graded" (a part of the rubric) or "beyond" (reported, never counted)
    part: Optional[str]
    outcome: str = "not run"  # one of OUTCOMES
    message: str = ""
    points: float = 0.0
    earned: float = 0.0

    @property
    def name(self) -> str:
        """The check's name without its folders: 'test_rnn.py::test_x[float32]'."""
        return self.nodeid.split("/")[-1]


def summarize_parts(checks: List[CheckResult]) -> Dict[str, dict]:
    """{part key: {"title", "points", "earned", "passed", "tests"}} for every part of the rubric."""
    summary = {}
    for part in PARTS:
        graded = [c for c in checks if c.kind == "graded" and c.part == part.key]
        summary[part.key] = {
            "title": part.title,
            "points": part.points,
            "earned": round(sum(c.earned for c in graded), 4),
            "passed": sum(c.outcome == "passed" for c in graded),
            "tests": len(graded),
        }
    return summary


def checks_from_grade(grade: dict) -> List[CheckResult]:
    """
    The checks of a grade file (the JSON of `--grade-json`), validated:
    ValueError when it is not one. Earned points never exceed a check's points.
    """
    if not isinstance(grade, dict) or not isinstance(grade.get("tests"), list):
        raise ValueError("not a grade file")
    parts = {p.key for p in PARTS}
    checks = []
    for kind, entries in (("graded", grade.get("tests", [])), ("beyond", grade.get("beyond", []))):
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                raise ValueError("a check that is not an object")
            outcome = str(entry.get("outcome", "not run"))
            part = entry.get("part") if kind == "graded" else None
            if kind == "graded" and part not in parts:
                raise ValueError(f"a check of no known part: {part!r}")
            points = float(entry.get("points", 0.0)) if kind == "graded" else 0.0
            checks.append(CheckResult(
                nodeid=str(entry.get("nodeid", ""))[:500], kind=kind, part=part,
                outcome=outcome if outcome in OUTCOMES else "failed", message=str(entry.get("message", ""))[:2000],
                points=points, earned=points if outcome == "passed" else 0.0,
            ))
    return checks
