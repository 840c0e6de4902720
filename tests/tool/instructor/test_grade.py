"""
The batch grader (helper.grade): good, broken and hostile submissions, each
graded in its sandbox with a small selection of checks, and the files it
writes (CSV, feedback, Gradescope's results.json).

One batch grades every submission (module fixture); the tests read its
results. About 2-3 minutes on 2 cores.
"""
import csv
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from helper.instructor import grade
from helper.instructor.grade_model import parse_table, table_points
from helper.instructor.grade_notebook import cell_markers
from helper.common.utils import import_file
from helper.instructor.sandbox import bwrap_path

from _cli_data import tiny_checkpoint, write_tiny_data
from _grade_fixtures import AT_IMPORT, GOOD, IN_FUNCTION, SELECT, write_notebooks, write_submission

HOSTILE = list(AT_IMPORT) + list(IN_FUNCTION) + ["self_grading"]


def options_for(submissions, out: Path, *extra) -> object:
    """Parsed and completed options of a test batch: few checks, short limits, no progress bar."""
    argv = [str(s) for s in submissions] + [
        "--out", str(out), "--select", SELECT, "--test-timeout", "5", "--time-limit", "90",
        "--import-timeout", "45", "--memory-gb", "6", "--no-progress", "--no-beyond", "--jobs", "2",
        "--notebook-data", "", *extra,
    ]
    return grade.complete_options(grade.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Grade the good submission, every hostile one, and write the reports."""
    root = tmp_path_factory.mktemp("batch")
    decoy = root / "grader_file.txt"
    decoy.write_text("the grader's own")
    subs = root / "subs"
    sources = [write_submission(subs, name, decoy) for name in ["good"] + HOSTILE]
    out = root / "out" / "grades.csv"
    options = options_for(sources, out, "--model-table", "")
    grades = grade.grade_batch(sources, options)
    print({g["name"]: round(g["seconds"], 1) for g in grades})
    grade.grade_report.write_csv(out, grades)
    for g in grades:
        grade.grade_report.write_submission_files(out.with_suffix("") / g["name"], g)
    return {"grades": {g["name"]: g for g in grades}, "out": out, "decoy": decoy, "options": options}


def earned(g, part):
    return g["parts"][part]["earned"]


def test_bubblewrap_is_used_where_it_works(batch):
    assert (batch["options"].bwrap is not None) == (bwrap_path() is not None)
    assert "bubblewrap" in batch["grades"]["good"]["sandbox"] or "NO SANDBOX" in batch["grades"]["good"]["sandbox"]


def test_good_submission_gets_the_points_of_every_selected_check(batch):
    good = batch["grades"]["good"]
    assert good["status"] == "graded" and good["reason"] == ""
    assert earned(good, "rnn") == pytest.approx(20) and earned(good, "embedding_loss") == pytest.approx(10)
    assert good["parts"]["rnn"]["tests"] == 2
    assert good["total"] == pytest.approx(30)


def test_grading_is_reproducible(batch):
    # Three submissions that behave alike (the same module, plus harmless noise) get the same row.
    rows = list(csv.DictReader(batch["out"].open()))
    by_name = {row.pop("name"): row for row in rows}
    assert by_name["good"] == by_name["writes_outside"] == by_name["prints"]


@pytest.mark.parametrize("name", ["syntax", "raises", "hangs", "sys_exit", "os_exit", "segfault", "huge"])
def test_a_module_that_cannot_be_imported_scores_nothing_with_a_reason(batch, name):
    g = batch["grades"][name]
    assert g["status"] == "import error", g["reason"]
    assert g["total"] == 0
    expected = {
        "syntax": "SyntaxError", "raises": "refuses to load", "hangs": "time limit", "sys_exit": "failed",
        "os_exit": "failed", "segfault": "segmentation fault", "huge": "MemoryError",
    }[name]
    assert expected in g["reason"]


@pytest.mark.parametrize(
    "name, why",
    [
        ("exit_in_function", "ended early"),
        ("segfault_in_function", "segmentation fault"),
        ("ignores_alarm", "time limit"),
    ],
)
def test_a_check_that_kills_its_process_is_named_and_the_finished_checks_keep_their_points(batch, name, why):
    g = batch["grades"][name]
    assert g["status"] == "partial"
    assert why in g["reason"] and "test_rnn_step_forward" in g["reason"]
    assert earned(g, "rnn") == 0
    assert earned(g, "embedding_loss") == pytest.approx(10)  # those ran before the crash


@pytest.mark.parametrize("name, why", [
    ("loops_in_function", "stopped after 5 s"), ("sys_exit_in_function", "SystemExit"),
    ("huge_in_function", ""), ("any_equal", "expected a torch.Tensor"),
    ("prints_in_function", "File too large"),  # Python ignores SIGXFSZ: the write fails, the check fails
    ("forges_events", "wrong"),  # a forged pass never overrides the check's real failure
])
def test_a_check_that_fails_inside_the_process_costs_its_points_only(batch, name, why):
    g = batch["grades"][name]
    assert g["status"] == "graded", g["reason"]
    assert earned(g, "rnn") == 0 and earned(g, "embedding_loss") == pytest.approx(10)
    rnn = [c for c in g["checks"] if c.part == "rnn"]
    assert rnn and all(why in c.message for c in rnn)


@pytest.mark.parametrize("name, clue", [
    ("self_grading", "tampering"), ("patches_pytest", "must fail passed"),
])
def test_tampering_in_the_process_is_caught_and_scores_nothing(batch, name, clue):
    g = batch["grades"][name]
    assert g["status"] == "tampering" and clue in g["reason"]
    assert g["total"] == 0


def test_writes_outside_the_scratch_folder_change_nothing(batch):
    assert batch["decoy"].read_text() == "the grader's own"
    assert batch["grades"]["writes_outside"]["total"] == pytest.approx(30)


@pytest.mark.skipif(bwrap_path() is None, reason="needs bubblewrap: without it the copy is writable (tested below)")
def test_in_the_sandbox_the_test_files_cannot_be_changed(batch):
    g = batch["grades"]["tampers_tests"]
    assert g["status"] == "graded" and earned(g, "rnn") == pytest.approx(20)


def test_megabytes_of_output_do_not_reach_the_reports(batch):
    g = batch["grades"]["prints"]
    assert g["total"] == pytest.approx(30)
    folder = batch["out"].with_suffix("")
    assert all(p.stat().st_size < 100_000 for p in folder.rglob("*") if p.is_file())


def test_csv_has_a_row_per_submission_with_the_points_of_every_part(batch):
    rows = list(csv.DictReader(batch["out"].open()))
    assert [r["name"] for r in rows] == sorted(batch["grades"])
    assert list(rows[0]) == ["name", "rnn", "embedding_loss", "lstm", "attention", "encoder", "captioning",
                             "notebook", "model", "total", "max_total", "status", "reason"]
    good = next(r for r in rows if r["name"] == "good")
    assert (good["rnn"], good["embedding_loss"], good["total"], good["status"]) == ("20.00", "10.00", "30.00", "graded")


def test_feedback_names_each_failed_check_and_what_it_expected_without_the_suites_code(batch):
    text = (batch["out"].with_suffix("") / "any_equal" / "feedback.txt").read_text()
    assert "test_rnn_step_forward_is_tanh_of_the_two_affine_maps[float32]" in text
    assert "expected a torch.Tensor" in text
    assert "def test_" not in text and "_references" not in text


def test_results_json_is_gradescopes_format_and_adds_up(batch):
    results = json.loads((batch["out"].with_suffix("") / "segfault_in_function" / "results.json").read_text())
    assert set(results) >= {"score", "tests"}
    assert all(set(t) >= {"name", "score", "max_score", "output"} for t in results["tests"])
    assert sum(t["score"] for t in results["tests"]) == pytest.approx(results["score"]) == pytest.approx(10)
    assert sum(t["max_score"] for t in results["tests"]) == pytest.approx(30)


# ---------------------------------------------------------------------------
# Without a sandbox, the zip, the notebook and the trained model


def load_good_module():
    return import_file(GOOD, "good_solution_for_grade_tests", register=False)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """
    A zip with module, notebook and model; a folder with a damaged model; one with a model that does
    not fit; a test-file tamperer. Without the sandbox (its fallback is tested here).
    """
    root = tmp_path_factory.mktemp("full")
    data = write_tiny_data(root / "tiny.pt", num_val=6)
    reference, student = write_notebooks(root)
    (root / "alice" / "runs" / "notebook" / "attn").mkdir(parents=True)
    shutil.copy(GOOD, root / "alice" / "rnn_lstm_captioning.py")
    shutil.copy(student, root / "alice" / "rnn_lstm_captioning.ipynb")
    tiny_checkpoint(load_good_module(), root / "alice" / "runs/notebook/attn/best.pt", data_path=str(data))
    with zipfile.ZipFile(root / "alice.zip", "w") as archive:
        for path in (root / "alice").rglob("*"):
            archive.write(path, path.relative_to(root / "alice").as_posix())
    shutil.copytree(root / "alice", root / "bob")
    (root / "bob" / "runs/notebook/attn/best.pt").write_bytes(b"not a checkpoint")
    (root / "bob" / "rnn_lstm_captioning.ipynb").unlink()
    shutil.copytree(root / "bob", root / "carol")
    checkpoint = torch.load(root / "alice" / "runs/notebook/attn/best.pt", weights_only=True)
    checkpoint["model"]["extra.weight"] = torch.zeros(3)  # a state dict that does not fit the module
    torch.save(checkpoint, root / "carol" / "runs/notebook/attn/best.pt")
    tamperer = write_submission(root, "tampers_tests", root / "decoy")
    sources = [root / "alice.zip", root / "bob", root / "carol", tamperer]
    options = options_for(sources, root / "out" / "grades.csv", "--no-sandbox", "--reference-notebook",
                          str(reference), "--model-table", "bleu1>=0:3,exact>=1.01:9")
    return {g["name"]: g for g in grade.grade_batch(sources, options)}


def test_without_a_sandbox_changed_test_files_are_caught(full):
    g = full["tampers_tests"]
    assert g["status"] == "tampering" and "test files" in g["reason"] and g["total"] == 0
    assert "NO SANDBOX" in g["sandbox"]


def test_notebook_cells_are_reported_one_by_one_under_our_markers(full):
    notebook = full["alice"]["notebook"]
    statuses = [c["status"] for c in notebook["cells"]]
    expected = ["reproduced", "reproduced", "differs", "fails", "differs", "output ignored", "reproduced"]
    assert statuses == expected, notebook["cells"]
    assert "'3\\n' == '2\\n'" in notebook["cells"][2]["message"] and "broken cell" in notebook["cells"][3]["message"]
    assert notebook["added_markers"] == [(4, "NBVAL_SKIP")]
    assert notebook["earned"] == pytest.approx(10 * 3 / 6)
    assert "added by the student" in notebook["reason"]


def test_a_trained_model_is_scored_by_the_threshold_table(full):
    model = full["alice"]["model"]
    assert model["reason"] == "", model["reason"]
    assert set(model["metrics"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact"}
    assert model["earned"] == 3 and model["points"] == 9
    assert full["alice"]["total"] == pytest.approx(30 + 5 + 3)


def test_a_damaged_model_costs_the_model_points_only(full):
    bob = full["bob"]
    assert bob["model"]["earned"] == 0 and "not a checkpoint" in bob["model"]["reason"]
    assert bob["notebook"] is None
    assert bob["total"] == pytest.approx(30) and bob["status"] == "graded"


def test_a_model_that_does_not_fit_the_module_costs_the_model_points_only(full):
    carol = full["carol"]
    assert carol["model"]["earned"] == 0
    assert "failed: RuntimeError" in carol["model"]["reason"] and "extra.weight" in carol["model"]["reason"]
    assert carol["total"] == pytest.approx(30)


def test_threshold_table_parsing():
    table = parse_table("exact>=0.5:10, cider>=3:4")
    assert table == [("exact", 0.5, 10.0), ("cider", 3.0, 4.0)]
    assert table_points(table, {"exact": 0.6, "cider": 3.5}) == 10
    assert table_points(table, {"exact": 0.1, "cider": 3.5}) == 4
    assert table_points(table, {"exact": 0.1, "cider": 1.0}) == 0
    with pytest.raises(ValueError, match="bad threshold row"):
        parse_table("accuracy>=1:3")


def test_markers_are_read_from_comment_lines():
    source = "# NBVAL_SKIP\nx = 1  # NBVAL_IGNORE_OUTPUT\n#NBVAL_IGNORE_OUTPUT"
    assert cell_markers(source) == ["NBVAL_SKIP", "NBVAL_IGNORE_OUTPUT"]


def test_command_line_reports_a_missing_submission(tmp_path, capsys):
    assert grade.main([str(tmp_path / "nobody.zip"), "--out", str(tmp_path / "g.csv")]) == 1
    assert "no such submission" in capsys.readouterr().err
