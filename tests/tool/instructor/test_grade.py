"""
The batch grader (helper.grade): what it writes (the CSV, with a final
"sandbox" column; feedback; Gradescope's results.json), what a module that
does not import or that crashes, hangs or exits inside a check costs, the
notebook and the trained model, and its refusal to run submissions without
a sandbox unless --no-sandbox is given.

Two batches: broken submissions (a correct module plus one fault), in the
sandbox where bubblewrap works (else with --no-sandbox: what they test holds
either way); and hand-ins with a notebook and a trained model, graded as if
bubblewrap were missing, with --no-sandbox. Hostile submissions:
test_hostile.py. About 3 minutes on 2 cores, most of it the broken batch (its module that
hangs at import waits out the call timeout at each of its four checks).
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from helper.common.utils import import_file
from helper.grading import sandbox
from helper.instructor import grade, handin
from helper.instructor.grade_model import parse_table, table_points
from helper.instructor.grade_report import csv_columns
from helper.instructor.notebook_cells import cell_markers

from _cli_data import tiny_checkpoint, write_tiny_data
from _grade_fixtures import (BROKEN_AT_IMPORT, BROKEN_IN_ONE_CHECK, CALL_TIMEOUT, FULL_MARKS, GOOD, REPO, SELECT,
                             batch_options, broken_module, grade_batch, write_module, write_notebooks)

# The slow tier (make test-all): batches of submissions, each graded by the judge and its worker.
pytestmark = pytest.mark.slow

PARTS = list(FULL_MARKS)
FULL = sum(FULL_MARKS.values())
F32 = "test_rnn_step_forward_is_tanh_of_the_two_affine_maps[float32]"
F64 = "test_rnn_step_forward_is_tanh_of_the_two_affine_maps[float64]"


@contextlib.contextmanager
def without_bubblewrap():
    """This process as on a machine without bwrap: the sandbox's own probe finds none."""
    which = shutil.which
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sandbox, "_PROBED", {})
        patch.setattr(sandbox.shutil, "which", lambda name, *a, **k: None if name == "bwrap" else which(name, *a, **k))
        yield


def sandbox_column() -> str:
    return "NONE (--no-sandbox)" if sandbox.sandbox_problem() else "bubblewrap"


# ---------------------------------------------------------------------------
# Broken submissions


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The correct module, a copy that prints 5 MB at import, and every broken variant, with --jobs 2."""
    root = tmp_path_factory.mktemp("broken")
    subs = root / "subs"
    # The one that hangs early: it waits out the call timeout at each of its four checks.
    names = ["hangs_at_import", *(n for n in BROKEN_AT_IMPORT if n != "hangs_at_import"), *BROKEN_IN_ONE_CHECK]
    sources = [write_module(subs, "good", GOOD.read_text())] + [write_module(subs, n, broken_module(n)) for n in names]
    options = batch_options(jobs=2) + (["--no-sandbox"] if sandbox.sandbox_problem() else [])
    graded = grade_batch(sources, root / "out" / "grades.csv", options)
    print(graded.printed)
    return graded


def test_the_batch_finishes_and_every_row_names_how_its_submission_was_contained(broken):
    assert broken.exit_code == 0, broken.printed
    assert {row["sandbox"] for row in broken.rows.values()} == {sandbox_column()}


def test_a_correct_submission_gets_the_points_of_every_selected_check(broken):
    good = broken.rows["good"]
    assert (good["status"], good["reason"]) == ("graded", "")
    assert {part: broken.points("good", part) for part in PARTS} == FULL_MARKS
    assert broken.points("good") == FULL and good["max_total"] == "100.00"
    assert len(broken.results("good")["tests"]) == 4


def test_grading_is_reproducible_a_submission_that_behaves_alike_gets_the_same_row(broken):
    good, noisy = dict(broken.rows["good"]), dict(broken.rows["prints_5_mb_at_import"])
    good.pop("name"), noisy.pop("name")
    assert good == noisy


@pytest.mark.parametrize("name, why", [
    ("syntax_error", "SyntaxError"),
    ("raises_at_import", "this module refuses to load"),
    ("hangs_at_import", f"stopped after {CALL_TIMEOUT} s"),
    ("segfaults_at_import", "segmentation fault"),
    ("allocates_200_gb_at_import", "MemoryError"),
])
def test_a_module_that_cannot_be_imported_scores_nothing_with_a_reason(broken, name, why):
    row = broken.rows[name]
    assert row["status"] == "import error", row
    assert float(row["total"]) == 0
    assert "importing the module failed" in row["reason"] and why in row["reason"], row["reason"]


@pytest.mark.parametrize("name, why", [
    ("exits_in_one_check", "the worker process ended during the call"),
    ("segfaults_in_one_check", "segmentation fault"),
    ("hangs_in_one_check", f"stopped after {CALL_TIMEOUT} s"),
])
def test_a_check_that_ends_or_stops_its_worker_costs_that_check_only_and_is_named(broken, name, why):
    row = broken.rows[name]
    assert row["status"] == "partial", row
    assert F32 in row["reason"] and why in row["reason"], row["reason"]
    # The next check (float64) gets a new worker and passes; so do the loss checks that ran before.
    assert broken.points(name, "rnn") == FULL_MARKS["rnn"] / 2
    assert broken.points(name, "embedding_loss") == FULL_MARKS["embedding_loss"]


@pytest.mark.parametrize("name, why", [
    ("raises_system_exit_in_one_check", "SystemExit"),
    ("allocates_a_terabyte_in_one_check", "raised"),
    ("prints_100_mb_in_one_check", "File too large"),  # the worker's output is limited: the write fails
    ("returns_an_object_that_equals_anything_in_one_check", "expected a torch.Tensor of shape (3, 5), got AnyEqual"),
])
def test_a_check_that_fails_inside_its_worker_costs_that_check_only(broken, name, why):
    row = broken.rows[name]
    assert (row["status"], row["reason"]) == ("graded", ""), row
    tests = {t["name"].split("::")[-1]: t for t in broken.results(name)["tests"]}
    assert tests[F32]["score"] == 0 and why in tests[F32]["output"], tests[F32]
    assert tests[F64]["score"] == tests[F64]["max_score"] == FULL_MARKS["rnn"] / 2
    assert broken.points(name) == FULL - FULL_MARKS["rnn"] / 2


@pytest.mark.parametrize("name", ["good", "returns_an_object_that_equals_anything_in_one_check"])
def test_pytest_with_impl_and_the_batch_grader_give_the_same_points_from_one_engine(broken, name, tmp_path):
    # The batch grader runs the judge (pytest on tests/grading) on the hand-in: the same checks, the same points.
    module = broken.csv.parent.parent / "subs" / name / "rnn_lstm_captioning.py"
    grade_file = tmp_path / "grade.json"
    command = [sys.executable, "-m", "pytest", "tests/grading", f"--impl={module}", f"--grade-json={grade_file}",
               "-k", SELECT, "-q", "-p", "no:xdist", "--check-timeout", str(CALL_TIMEOUT)]
    subprocess.run(command, cwd=REPO, env={**os.environ, "CAPTIONING_IMPL": ""}, capture_output=True, timeout=600)
    by_pytest = json.loads(grade_file.read_text())
    by_grader = {t["name"].split("::")[-1]: t["score"] for t in broken.results(name)["tests"]
                 if not t["name"].startswith("[")}
    assert {t["nodeid"].split("::")[-1]: round(t["earned"], 4) for t in by_pytest["tests"]} == by_grader
    assert by_pytest["total"] == pytest.approx(broken.points(name))


def test_megabytes_of_output_never_reach_the_reports(broken):
    assert broken.points("prints_100_mb_in_one_check", "embedding_loss") == FULL_MARKS["embedding_loss"]
    files = [p for p in broken.folder.rglob("*") if p.is_file()] + [broken.csv]
    assert all(p.stat().st_size < 100_000 for p in files), max(files, key=lambda p: p.stat().st_size)


def test_csv_has_a_row_per_submission_with_every_part_then_a_final_sandbox_column(broken):
    header = broken.csv.read_text().splitlines()[0].split(",")
    assert header == csv_columns()
    assert header[:11] == ["name", "rnn", "embedding_loss", "lstm", "attention", "encoder", "captioning",
                           "notebook", "model", "total", "max_total"]
    assert {"status", "reason"} < set(header) and header[-1] == "sandbox"
    names = list(broken.rows)
    assert names == sorted(names) and len(names) == 1 + len(BROKEN_AT_IMPORT) + len(BROKEN_IN_ONE_CHECK)
    good = broken.rows["good"]
    assert (good["rnn"], good["embedding_loss"], good["total"], good["notebook"], good["model"]) == (
        "20.00", "10.00", "30.00", "", "")


def test_feedback_names_each_failed_check_and_what_went_wrong_without_the_suites_code(broken):
    text = broken.feedback("returns_an_object_that_equals_anything_in_one_check")
    assert text.startswith("Grade of returns_an_object_that_equals_anything_in_one_check: 20.00 / 100.00")
    assert f"test_rnn.py::{F32}: Failed: rnn_step_forward next_h: expected a torch.Tensor of shape (3, 5), got AnyEqual" in text
    assert "Vanilla RNN: step, sequence, backward pass by hand, module: 10.00 / 20 (1 of 2 checks passed)" in text
    assert "def test_" not in text and "_references" not in text
    assert ("Graded without a sandbox" in text) == (sandbox_column() != "bubblewrap")


def test_results_json_is_gradescopes_format_and_adds_up(broken):
    results = broken.results("segfaults_in_one_check")
    assert set(results) >= {"score", "output", "tests"}
    assert all(set(t) >= {"name", "score", "max_score", "output"} for t in results["tests"])
    assert sum(t["score"] for t in results["tests"]) == pytest.approx(results["score"]) == FULL - 10
    assert sum(t["max_score"] for t in results["tests"]) == pytest.approx(FULL)
    assert "segmentation fault" in results["output"]


# ---------------------------------------------------------------------------
# Without a sandbox: refused, unless --no-sandbox


def test_without_a_working_sandbox_the_grader_refuses_before_any_submission_runs(tmp_path, capsys):
    marker = tmp_path / "the_submission_ran"
    source = write_module(tmp_path, "eager", f"open({str(marker)!r}, 'w').write('ran')\n" + GOOD.read_text())
    with without_bubblewrap():
        code = grade.main([str(source), "--out", str(tmp_path / "out" / "grades.csv"), "--no-progress"])
    error = capsys.readouterr().err
    assert code != 0
    assert "apt-get install bubblewrap" in error and "--no-sandbox" in error, error
    assert not marker.exists() and not (tmp_path / "out" / "grades.csv").exists()


def load_good_module():
    return import_file(GOOD, "good_solution_for_grade_tests", register=False)


@pytest.fixture(scope="module")
def unsandboxed(tmp_path_factory):
    """
    As if bubblewrap were missing, with --no-sandbox: a zip with module, notebook and model (alice); a
    damaged model and no notebook (bob); a model that does not fit the module (carol).
    """
    root = tmp_path_factory.mktemp("unsandboxed")
    data = write_tiny_data(root / "tiny.pt", num_val=6)
    reference, student = write_notebooks(root)
    alice = root / "alice"
    (alice / "runs" / "notebook" / "attn").mkdir(parents=True)
    shutil.copy(GOOD, alice / "rnn_lstm_captioning.py")
    shutil.copy(student, alice / "rnn_lstm_captioning.ipynb")
    tiny_checkpoint(load_good_module(), alice / "runs/notebook/attn/best.pt", data_path=str(data))
    with zipfile.ZipFile(root / "alice.zip", "w") as archive:
        for path in alice.rglob("*"):
            archive.write(path, path.relative_to(alice).as_posix())
    shutil.copytree(alice, root / "bob")
    (root / "bob" / "runs/notebook/attn/best.pt").write_bytes(b"not a checkpoint")
    (root / "bob" / "rnn_lstm_captioning.ipynb").unlink()
    shutil.copytree(root / "bob", root / "carol")
    checkpoint = torch.load(alice / "runs/notebook/attn/best.pt", weights_only=True)
    checkpoint["model"]["extra.weight"] = torch.zeros(3)  # a state dict that does not fit the module
    torch.save(checkpoint, root / "carol" / "runs/notebook/attn/best.pt")
    sources = [root / "alice.zip", root / "bob", root / "carol"]
    options = batch_options(jobs=2) + ["--no-sandbox", "--reference-notebook", str(reference), "--model-table",
                                       "bleu1>=0:3,exact>=1.01:9", "--model-data", str(data), "--notebook-points", "10"]
    with without_bubblewrap():
        graded = grade_batch(sources, root / "out" / "grades.csv", options)
    print(graded.printed)
    return graded


def test_with_no_sandbox_it_grades_without_bubblewrap_and_every_report_says_so(unsandboxed):
    assert unsandboxed.exit_code == 0, unsandboxed.printed
    assert "NO SANDBOX (--no-sandbox)" in unsandboxed.printed
    assert {row["sandbox"] for row in unsandboxed.rows.values()} == {"NONE (--no-sandbox)"}
    for name in unsandboxed.rows:
        assert "Graded without a sandbox: NO SANDBOX" in unsandboxed.feedback(name)


def test_notebook_cells_are_reported_one_by_one_against_the_references_checked_cells(unsandboxed):
    text = unsandboxed.feedback("alice")
    statuses = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("  cell ") and
                "marker" not in line]
    # The reference's sixth cell is NBVAL_IGNORE_OUTPUT: not checked, so six checked cells of seven.
    assert statuses == ["reproduced", "reproduced", "differs", "fails", "differs", "reproduced"], text
    assert "'3\\n' == '2\\n'" in text and "broken cell" in text
    assert "cell 4: you added the marker NBVAL_SKIP; it was not obeyed" in text
    assert unsandboxed.rows["alice"]["notebook"] == "5.00"  # 10 points x 3 of 6


def test_a_trained_model_is_scored_by_the_threshold_table(unsandboxed):
    row = unsandboxed.rows["alice"]
    assert row["status"] == "graded", row
    text = unsandboxed.feedback("alice")
    assert "Trained model: 3.00 / 9" in text
    assert all(name in text for name in ("bleu1", "bleu4", "cider", "exact"))
    assert (row["model"], row["total"], row["max_total"]) == ("3.00", "38.00", "119.00")  # 30 + 5 + 3


def test_a_damaged_model_costs_the_model_points_only(unsandboxed):
    row = unsandboxed.rows["bob"]
    assert (row["model"], row["notebook"], row["total"], row["status"]) == ("0.00", "", "30.00", "graded"), row
    assert "not a checkpoint" in row["reason"] + unsandboxed.feedback("bob")


def test_a_model_that_does_not_fit_the_module_costs_the_model_points_only(unsandboxed):
    row = unsandboxed.rows["carol"]
    assert (row["model"], row["total"]) == ("0.00", "30.00"), row
    text = unsandboxed.feedback("carol")
    assert "RuntimeError" in text and "extra.weight" in text


# ---------------------------------------------------------------------------
# Parts without a batch


def test_threshold_table_parsing():
    table = parse_table("exact>=0.5:10, cider>=3:4")
    assert table == [("exact", 0.5, 10.0), ("cider", 3.0, 4.0)]
    assert table_points(table, {"exact": 0.6, "cider": 3.5}) == 10
    assert table_points(table, {"exact": 0.1, "cider": 3.5}) == 4
    assert table_points(table, {"exact": 0.1, "cider": 1.0}) == 0
    with pytest.raises(ValueError, match="bad threshold row"):
        parse_table("accuracy>=1:3")


def test_markers_are_read_from_comment_lines_only():
    source = "# NBVAL_SKIP\nx = 1  # NBVAL_IGNORE_OUTPUT\n#NBVAL_IGNORE_OUTPUT"
    assert cell_markers(source) == ["NBVAL_SKIP", "NBVAL_IGNORE_OUTPUT"]


def test_command_line_reports_a_missing_submission(tmp_path, capsys):
    assert grade.main([str(tmp_path / "nobody.zip"), "--out", str(tmp_path / "g.csv")]) == 1
    assert "no such submission" in capsys.readouterr().err


@pytest.mark.parametrize("path, name", [
    ("alice.zip", "alice"), ("bob", "bob"), ("carol/rnn_lstm_captioning.py", "carol"), ("d a/x.zip", "x"),
    ("e v/rnn_lstm_captioning.py", "e_v"),
])
def test_a_submission_is_named_after_its_zip_or_folder(tmp_path, path, name):
    target = tmp_path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.mkdir() if "." not in target.name else target.write_text(""))
    assert handin.submission_name(target) == name


def test_a_hand_in_s_files_are_taken_under_fixed_names_and_its_model_read_before_any_code(tmp_path):
    folder = tmp_path / "hand-in"
    (folder / "deep" / "runs" / "notebook" / "attn").mkdir(parents=True)
    (folder / "deep" / "rnn_lstm_captioning.py").write_text("# a copy")
    (folder / "rnn_lstm_captioning.py").write_text("# the module")  # the shortest path wins
    (folder / "notes.ipynb").write_text("{}")
    (folder / "deep" / "runs/notebook/attn/best.pt").write_bytes(b"not a checkpoint")
    files = handin.unpack(folder, tmp_path / "work")
    assert files["module"].read_text() == "# the module" and files["notebook"] is None
    assert files["checkpoint"] is None and "is not a checkpoint" in files["problems"][0]
    assert not (tmp_path / "work" / "weights.pt").exists()  # read into memory, then removed


def test_a_zip_with_too_many_members_is_refused_before_unpacking(tmp_path, monkeypatch):
    monkeypatch.setattr(handin, "MAX_MEMBERS", 3)
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as archive:
        for i in range(4):
            archive.writestr(f"f{i}.txt", "x")
        archive.writestr("rnn_lstm_captioning.py", "# the module")
    files = handin.unpack(tmp_path / "many.zip", tmp_path / "work")
    assert files["module"] is None and "holds 5 files (at most 3)" in files["problems"][0]


def test_a_hand_in_that_is_neither_a_folder_a_module_nor_a_zip_is_a_reason(tmp_path):
    (tmp_path / "essay.txt").write_text("I did it")
    files = handin.unpack(tmp_path / "essay.txt", tmp_path / "work")
    assert files["module"] is None and "is not a folder, a .py file or a zip" in files["problems"][0]
