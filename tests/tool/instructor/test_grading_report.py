"""
The grade of a run: points per part of helper.kit.rubric, shared by the part's
tests; checks beyond the contract reported, never counted; and a submission
that tampers with the comparisons scores nothing.
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


def test_a_self_grading_submission_scores_nothing_and_is_named(tmp_path):
    grade = grade_of(SOLUTIONS / "self_grading" / "rnn_lstm_captioning.py", tmp_path, *GRADING_TEST_FILES[:4])
    assert grade["total"] == 0
    assert all(t["earned"] == 0 for t in grade["tests"])
    assert "torch.allclose" in grade["tampering"] and "torch.equal" in grade["tampering"]


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
    assert grade["tampering"] is None


def test_checks_compare_with_the_functions_as_they_were_before_the_submission(monkeypatch):
    # What a submission could do at import: the checks keep their own references.
    monkeypatch.setattr(torch, "allclose", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch, "equal", lambda *args, **kwargs: True)
    with pytest.raises(pytest.fail.Exception, match="differs from the reference"):
        check_close("x", torch.zeros(3), torch.ones(3))
    assert not same(torch.zeros(3), torch.ones(3))


def test_results_that_claim_to_equal_anything_fail(monkeypatch):
    class Agreeable(torch.Tensor):
        def __eq__(self, other):
            return True

    with pytest.raises(pytest.fail.Exception, match="expected a torch.Tensor"):
        check_close("x", torch.zeros(3).as_subclass(Agreeable), torch.ones(3))

    class Truthy:
        def __bool__(self):
            return True

    expect(Truthy(), "an ordinary object is judged by its truth value")
    with pytest.raises(pytest.fail.Exception):
        expect(torch.tensor([True, False]), "a tensor of several values is not a yes")


def test_the_contract_page_states_the_rubric_points_of_every_part():
    page = (REPO_ROOT / "tests" / "CONTRACT.md").read_text()
    for part in rubric.PARTS:
        assert f"| {part.title} (" in page and f"| {part.points:g} |" in page, part.key
    assert f"**{rubric.TOTAL_POINTS:g}**" in page
