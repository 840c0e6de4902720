"""
Regrades (python -m helper.grade ... --regrade OLD.csv), the suite's stamp,
the LMS export, and who sees what when in results.json (grade_report).

One regrade of a batch after a changed check: the batch (a correct module,
one that fails one rnn check, the zeros module) is graded by a copy of the
grader whose loss reference is wrong (the package of helper.gradescope,
unpacked, with tests/_references.py changed), the instructor adds an
adjustment and a column of their own to that CSV, and the batch is graded
again by this repository into the same CSV. The report must name exactly the
students and checks that changed, the suite file that changed, and keep
the instructor's columns. About 1 minute on 2 cores (the slow tier); the rest is quick.
"""
import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helper.grading.results import CheckResult, summarize_parts
from helper.instructor import grade_report, gradescope, regrade

from _grade_fixtures import GOOD, ZEROS, batch_options, broken_module, grade_batch, write_module

LOSS_CHECKS = [f"test_embedding_loss.py::test_temporal_softmax_loss_sums_over_time_and_averages_over_batch[{d}]"
               for d in ("float32", "float64")]
WRONG_REFERENCE = '''

_right_temporal_loss = temporal_loss


def temporal_loss(x, y, ignore_index=None):
    """A wrong reference (averaged over time as well): the check that was wrong."""
    return _right_temporal_loss(x, y, ignore_index) / x.shape[1]
'''


def read_rows(path: Path) -> dict:
    with open(path, encoding="utf-8", newline="") as f:
        return {row.get("name") or row.get("student"): row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def regraded(tmp_path_factory):
    """The old grading (a wrong loss check), the instructor's edits, then the regrade into the same CSV."""
    root = tmp_path_factory.mktemp("regrade")
    package = root / "old-suite.zip"
    config = gradescope.config_of(gradescope.build_parser().parse_args([str(package)]))
    gradescope.build_package(package, {**config, "grade_options": ["--no-beyond", "--notebook-points", "0"]})
    old_suite = root / "old-suite"
    zipfile.ZipFile(package).extractall(old_suite)
    with open(old_suite / "tests" / "_references.py", "a") as f:
        f.write(WRONG_REFERENCE)
    subs = root / "subs"
    sources = [write_module(subs, "good", GOOD.read_text()),
               write_module(subs, "half", broken_module("raises_system_exit_in_one_check")),
               write_module(subs, "zeros", ZEROS.read_text())]
    out = root / "grades" / "grades.csv"
    old = subprocess.run([sys.executable, "-m", "helper.grade", *map(str, sources), "--out", str(out),
                          *batch_options(jobs=2)], cwd=old_suite, capture_output=True, text=True)
    assert old.returncode == 0, old.stdout + old.stderr
    old_rows = read_rows(out)
    old_results = {n: json.loads((out.with_suffix("") / n / "results.json").read_text()) for n in old_rows}
    # The instructor's edits: an adjustment, and a column of their own.
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["adjustment"] = "2" if row["name"] == "zeros" else ""
        row["comment"] = "late hand-in" if row["name"] == "good" else ""
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    new = grade_batch(sources, out, batch_options(jobs=2) + ["--regrade", str(out)])
    print(old.stdout, new.printed)
    assert new.exit_code == 0, new.printed
    return {"old_rows": old_rows, "old_results": old_results, "new": new, "out": out,
            "report": read_rows(out.with_name("grades-regrade.csv")),
            "text": out.with_name("grades-regrade.txt").read_text()}


@pytest.mark.slow  # two gradings of a batch
def test_the_old_grading_had_the_wrong_check(regraded):
    for name in ("good", "half"):
        scores = {t["name"]: t["score"] for t in regraded["old_results"][name]["tests"]}
        assert [scores[c] for c in LOSS_CHECKS] == [0, 0], scores
    assert regraded["old_rows"]["good"]["total"] == "20.00"


@pytest.mark.slow  # two gradings of a batch
def test_a_regrade_reports_exactly_the_students_and_checks_that_changed(regraded):
    report = regraded["report"]
    assert sorted(report) == ["good", "half"]  # zeros failed the loss checks before and after
    for name, old, new in (("good", "20.00", "30.00"), ("half", "10.00", "20.00")):
        row = report[name]
        assert (row["old_total"], row["new_total"], row["change"]) == (old, new, "+10.00")
        changed = [part.split(": ")[0] for part in row["checks"].split("; ")]
        assert changed == LOSS_CHECKS, row["checks"]
        assert row["checks"].count("0 -> 5 (now passed (was: ") == 2, row["checks"]


@pytest.mark.slow  # two gradings of a batch
def test_the_regrade_names_the_suite_file_that_changed_and_stamps_both_suites(regraded):
    text, row = regraded["text"], regraded["report"]["good"]
    changed = text.split("Suite files changed since the earlier grading: ", 1)[1].splitlines()[0].split(", ")
    assert "tests/_references.py" in changed  # (and any suite file edited here while the test ran)
    assert row["old_suite"] != row["new_suite"] and len(row["new_suite"]) == 16
    assert row["old_suite"] == regraded["old_rows"]["good"]["suite"]
    new_rows = read_rows(regraded["out"])
    assert {r["suite"] for r in new_rows.values()} == {row["new_suite"]}
    assert regraded["new"].results("good")["extra_data"]["suite_digest"] == row["new_suite"]


@pytest.mark.slow  # two gradings of a batch
def test_the_regrade_keeps_the_instructors_columns_and_the_lms_export_adds_the_adjustment(regraded):
    rows = read_rows(regraded["out"])
    assert (rows["zeros"]["adjustment"], rows["good"]["comment"], rows["half"]["comment"]) == ("2", "late hand-in", "")
    header = regraded["out"].read_text().splitlines()[0].split(",")
    assert header.index("comment") == header.index("adjustment") + 1 and header[-1] == "sandbox"
    lms = read_rows(grade_report.lms_path(regraded["out"]))
    assert {name: row["total"] for name, row in lms.items()} == {"good": "30.00", "half": "20.00", "zeros": "2.00"}
    assert "zeros: " not in regraded["text"] and "good: 20.00 -> 30.00" in regraded["text"]


# ---------------------------------------------------------------------------
# Parts, without grading


def fake_grade(name: str, outcomes: dict, points: float = 5.0, **extra) -> dict:
    """A grade of embedding_loss checks: {check name: outcome}."""
    checks = [CheckResult(f"tests/grading/test_embedding_loss.py::{check}", "graded", "embedding_loss", outcome,
                          "" if outcome == "passed" else "expected 1.0, got 0.0", points,
                          points if outcome == "passed" else 0.0) for check, outcome in outcomes.items()]
    parts = summarize_parts(checks)
    return {"name": name, "status": "graded", "reason": "", "parts": parts, "checks": checks, "notebook": None,
            "model": None, "total": sum(p["earned"] for p in parts.values()), "max_total": 100.0,
            "sandbox": "bubblewrap", "seconds": 1.0, "suite": {"digest": "new", "files": {}}, **extra}


@pytest.mark.parametrize("old, new, why", [
    ((0, 5, "failed: expected 1"), (5, 5, "passed"), "now passed (was: failed: expected 1)"),
    ((5, 5, "passed"), (0, 5, "Failed: shape (2,)\nmore"), "now failed: Failed: shape (2,)"),
    ((5, 5, "passed"), (10, 10, "passed"), "re-weighted: worth 5 -> 10"),
    (None, (4, 4, "passed"), "a new check"),
    ((4, 4, "passed"), None, "the check was removed"),
])
def test_a_check_s_change_says_why(old, new, why):
    change = regrade.check_change("test_x", old, new)
    assert change["why"] == why and (change["old"], change["new"]) == ((old or (0,))[0], (new or (0,))[0])


@pytest.mark.parametrize("old, new", [((5, 5, "passed"), (5, 5, "passed")), ((0, 5, "failed: a"), (0, 5, "failed: b")),
                                      ((0, 5, "failed"), (0, 10, "failed")), (None, (0, 4, "failed"))])
def test_a_check_whose_points_did_not_change_is_not_a_change(old, new):
    assert regrade.check_change("test_x", old, new) is None


def test_the_suite_stamp_covers_what_decides_points_and_nothing_else(tmp_path):
    for name in ("tests/grading/test_a.py", "tests/_grading.py", "tests/conftest.py", "helper/kit/rubric.py",
                 "helper/grading/worker.py", "tests/tool/test_b.py", "helper/kit/selfcheck.py", "tests/mutants.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    stamp = regrade.suite_stamp(tmp_path)
    assert sorted(stamp["files"]) == ["helper/grading/worker.py", "helper/kit/rubric.py", "tests/_grading.py",
                                      "tests/conftest.py", "tests/grading/test_a.py"]
    (tmp_path / "tests/tool/test_b.py").write_text("changed")
    assert regrade.suite_stamp(tmp_path) == stamp
    (tmp_path / "helper/kit/rubric.py").write_text("re-weighted")
    assert regrade.suite_stamp(tmp_path)["digest"] != stamp["digest"]


def test_an_old_csv_without_results_json_is_compared_part_by_part(tmp_path):
    old_csv = tmp_path / "old.csv"
    grade_report.write_csv(old_csv, [fake_grade("ann", {"test_a": "failed", "test_b": "passed"})])
    previous = regrade.read_previous(old_csv)  # no grades/ folder next to it
    assert not previous["ann"].detailed
    change = regrade.student_change(previous["ann"], fake_grade("ann", {"test_a": "passed", "test_b": "passed"}))
    assert [(c["check"], c["old"], c["new"]) for c in change["checks"]] == [("part embedding_loss", 5.0, 10.0)]
    assert "per-check detail unknown" in change["checks"][0]["why"]


def test_a_csv_that_is_not_a_grades_csv_is_refused(tmp_path):
    (tmp_path / "x.csv").write_text("student,score\nann,3\n")
    with pytest.raises(ValueError, match="not a grades CSV"):
        regrade.read_previous(tmp_path / "x.csv")


def test_the_lms_export_has_one_row_per_student_and_leaves_a_grader_error_blank(tmp_path):
    grades = [fake_grade("bob", {"test_a": "passed"}, adjustment="-1.5"),
              fake_grade("ann", {"test_a": "passed"}, adjustment="see email"),
              {**fake_grade("cid", {"test_a": "failed"}), "status": "grader error"}]
    grade_report.write_csv(tmp_path / "grades.csv", grades)
    lines = grade_report.lms_path(tmp_path / "grades.csv").read_text().splitlines()
    assert lines == ["student,total", "ann,5.00", "bob,3.50", "cid,"]


# ---------------------------------------------------------------------------
# results.json: who sees what when


def graded_test_functions() -> set:
    """The test functions of tests/grading/*.py."""
    import ast

    folder = Path(__file__).resolve().parents[2] / "grading"
    return {node.name for path in folder.glob("test_*.py") for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_each_public_counterpart_pairs_a_graded_check_with_a_public_check_of_the_kit():
    from helper.kit.public_checks import all_checks

    public = {name for checks in all_checks().values() for name, _ in checks}
    assert set(grade_report.PUBLIC_COUNTERPARTS) <= graded_test_functions()
    assert set(grade_report.PUBLIC_COUNTERPARTS.values()) <= public


def test_visibility_is_configurable_and_checks_beyond_the_assignment_are_never_public():
    default = grade_report.Visibility()
    assert default.of("test_rnn.py::test_rnn_forward_matches_torch_nn_rnn[float32]") == "visible"
    assert default.of("test_rnn.py::test_rnn_backward_matches_autograd[float32]") == "after_due_date"
    assert default.of("model") == "after_due_date"
    custom = grade_report.Visibility(public=("test_rnn_*", "model"), other_visibility="hidden")
    assert custom.of("model") == "visible" and custom.of("test_lstm.py::test_lstm_x") == "hidden"
    assert custom.of(grade_report.BEYOND_PREFIX + "test_rnn_beyond") == "hidden"
    with pytest.raises(ValueError, match="not one of"):
        grade_report.Visibility(other_visibility="later")


def test_the_top_level_output_keeps_the_notes_about_checks_shown_later_for_later():
    grade = fake_grade("ann", {"test_temporal_softmax_loss_sums_over_time_and_averages_over_batch[float32]": "failed",
                               "test_word_embedding_gradient_by_autograd_matches_the_reference": "failed"})
    grade["checks"][0].message = "the worker process ended during the call; it was started again"
    grade["checks"][1].message = "stopped after 15 s; the worker was stopped"
    grade["reason"] = "; ".join(["a.zip holds no notebook"] + [f"{c.name}: {c.message}" for c in grade["checks"]])
    results = grade_report.gradescope_results(grade)
    assert "Note: a.zip holds no notebook; test_embedding_loss.py::test_temporal_softmax_loss_sums_over_time_and_" \
           "averages_over_batch[float32]: the worker process ended during the call; it was started again\n" \
           in results["output"]
    assert "stopped after" not in results["output"] and "the worker was stopped" not in results["output"]
    assert "Note: and 1 about results shown later" in results["output"]
    assert "Results shown after the due date: 1 of 2." in results["output"]
    assert [t["visibility"] for t in results["tests"]] == ["visible", "after_due_date"]
    assert results["extra_data"]["suite_digest"] == "new" and "leaderboard" not in results
