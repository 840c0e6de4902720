"""
The grade of a run: points per part of helper.kit.rubric, shared by the part's
scored tests; checks beyond the contract reported, never counted; points for
work done only (a module that computes nothing, or the kit as handed out,
earns at most the floor stated in tests/CONTRACT.md); and a submission that
patches torch's comparisons gains nothing, since it never runs beside them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _grading import GRADING_TEST_FILES, check_close, expect, same
from helper.kit import rubric

REPO_ROOT = Path(__file__).resolve().parents[3]
SOLUTIONS = REPO_ROOT / "tests" / "solutions"


def grade_of(impl_file: Path, tmp_path: Path, *files: str, extra=()) -> dict:
    """Run pytest on files against impl_file in a subprocess, and return its --grade-json."""
    out = tmp_path / "grade.json"
    command = [sys.executable, "-m", "pytest", *files, f"--impl={impl_file}", f"--grade-json={out}", "-q",
               "-p", "no:xdist", "--tb=no", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAPTIONING_IMPL": "", "CAPTIONING_BEYOND": ""}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(out.read_text())


ZEROS_FLOOR = 10  # tests/CONTRACT.md: a module whose functions return zeros of the right shapes earns at most this


@pytest.mark.slow  # grades a file in a subprocess
@pytest.mark.parametrize("solution", ["zeros", "self_grading"])
def test_a_module_that_computes_nothing_earns_at_most_the_floor(tmp_path, solution):
    # zeros: the given code and the constructors, every other function returning zeros of the right shapes;
    # self_grading: zeros too, and it makes torch's comparisons always succeed (in its own process only).
    grade = grade_of(SOLUTIONS / solution / "rnn_lstm_captioning.py", tmp_path, *GRADING_TEST_FILES)
    assert grade["total"] <= ZEROS_FLOOR, [(t["nodeid"], t["earned"]) for t in grade["tests"] if t["earned"]]
    assert grade["max_total"] == rubric.TOTAL_POINTS


@pytest.mark.slow  # grades a file in a subprocess
def test_points_of_a_part_are_shared_by_its_tests_and_beyond_checks_are_not_counted(tmp_path):
    # The typical solution meets the contract, not our extras (it squeezes a batch of one away).
    files = ["tests/grading/test_lstm.py", "tests/beyond/test_any_grid_any_batch.py"]
    grade = grade_of(SOLUTIONS / "typical" / "rnn_lstm_captioning.py", tmp_path, *files, extra=["-k", "lstm"])
    lstm = rubric.part("lstm")
    assert [p["key"] for p in grade["parts"]] == ["lstm"]
    assert grade["parts"][0]["earned"] == grade["total"] == grade["max_total"] == lstm.points
    assert {t["part"] for t in grade["tests"]} == {"lstm"}
    assert sum(t["points"] for t in grade["tests"]) == pytest.approx(lstm.points)
    outcomes = {b["outcome"] for b in grade["beyond"]}
    assert outcomes == {"passed", "failed"}  # beyond checks are reported, met or not, and count for nothing
    assert all(b["message"].startswith("beyond the assignment") for b in grade["beyond"] if b["outcome"] == "failed")


@pytest.mark.slow  # grades a file in a subprocess
def test_unscored_checks_run_and_report_but_earn_nothing(tmp_path):
    grade = grade_of(SOLUTIONS / "typical" / "rnn_lstm_captioning.py", tmp_path, "tests/grading/test_encoder.py",
                     "tests/grading/test_lstm.py", extra=["-k", "encoder or parameters"])
    unscored = [t for t in grade["tests"] if t["points"] == 0]
    assert unscored and all(t["outcome"] == "passed" for t in unscored)
    assert {t["part"] for t in unscored} >= {"encoder", "lstm"}
    assert sum(t["earned"] for t in unscored) == 0


def test_results_that_are_not_plain_tensors_fail():
    class Truthy:
        def __bool__(self):
            return True

    with pytest.raises(pytest.fail.Exception, match="expected a torch.Tensor"):
        check_close("x", Truthy(), torch.ones(3))
    expect(Truthy(), "an ordinary object is judged by its truth value")
    with pytest.raises(pytest.fail.Exception):
        expect(torch.tensor([True, False]), "a tensor of several values is not a yes")
    assert not same(torch.zeros(3), torch.ones(3))


def test_the_contract_page_states_the_rubric_points_of_every_part():
    page = (REPO_ROOT / "tests" / "CONTRACT.md").read_text()
    for part in rubric.PARTS:
        assert f"| {part.title} (" in page and f"| {part.points:g} |" in page, part.key
    assert f"**{rubric.TOTAL_POINTS:g}**" in page
    assert f"at most {ZEROS_FLOOR} points" in page
