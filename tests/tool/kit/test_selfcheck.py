"""
The students' self-check (`python -m helper.selfcheck`): every part of the
kit's untouched module reported as not written, never a crash on a broken
module, and full points for the reference and for independently written
correct solutions (the public checks must not reject a correct solution).
"""
import json
import subprocess
import sys

import pytest

from _kit import MODULE, REPO_ROOT, copy_kit, make_kit, reference_source
from helper.kit import rubric
from helper.instructor.release import solution_blocks
from helper.common.utils import import_file
from helper.kit.selfcheck import format_report, part_status, selfcheck

SOLUTIONS = REPO_ROOT / "tests" / "solutions"
# The independent correct solutions, as `make solutions` (tests/solutions/check.py) lists them.
CORRECT_SOLUTIONS = import_file(SOLUTIONS / "check.py", "solutions_check", register=False).CORRECT


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("selfcheck"))


def _parts_with_solution_blocks() -> set:
    """The rubric's parts whose API the student writes (it holds a solution block)."""
    owners = {block["owner"].split(".")[0] for block in solution_blocks(reference_source())}
    owners |= {"RNN"} if "rnn_forward" in owners else set()  # RNN calls rnn_forward: unwritten with it
    return {part.key for part in rubric.PARTS if owners & set(part.api)}


@pytest.mark.slow  # runs the self-check: every part, in workers
def test_the_kit_reports_every_part_to_write_as_not_written(kit):
    results = selfcheck(kit / MODULE)
    assert [part["key"] for part in results] == [part.key for part in rubric.PARTS]
    to_write = _parts_with_solution_blocks()
    assert to_write >= {"rnn", "embedding_loss", "lstm", "attention", "captioning"}
    for part in results:
        statuses = {check["status"] for check in part["checks"]}
        assert statuses <= {"todo", "pass"}, part  # never fail, error or stop on the untouched kit
        if part["key"] in to_write:
            assert part["status"] == "todo" and part["earned"] == 0, part
            assert any("is not implemented yet" in check["detail"] for check in part["checks"])
        else:  # given code (the encoder) passes as given
            assert part["status"] == "pass"
    report = format_report(results, kit / MODULE)
    assert "not written yet" in report and "not your grade" in report
    assert f"of {rubric.TOTAL_POINTS:g} points" in report


@pytest.mark.slow  # runs the self-check: every part, in workers
def test_the_reference_copied_into_the_kit_gets_every_point(tmp_path, kit):
    solved = copy_kit(kit, tmp_path / "solved", with_reference=True)
    done = subprocess.run([sys.executable, "-m", "helper.selfcheck", "--json"], cwd=solved, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    results = json.loads(done.stdout)
    assert [p["status"] for p in results] == ["pass"] * len(rubric.PARTS)
    assert sum(p["earned"] for p in results) == rubric.TOTAL_POINTS


@pytest.mark.slow  # runs the self-check: every part, in workers
@pytest.mark.parametrize("solution", CORRECT_SOLUTIONS)
def test_independent_correct_solutions_pass_the_public_checks(solution):
    results = selfcheck(SOLUTIONS / solution / MODULE)
    failing = [(p["key"], c) for p in results for c in p["checks"] if c["status"] != "pass"]
    assert failing == []


def _broken_module(tmp_path, name: str, old: str, new: str):
    """The reference with one piece of text replaced (asserting it was there)."""
    source = reference_source()
    assert old in source, old
    path = tmp_path / name / MODULE
    path.parent.mkdir()
    path.write_text(source.replace(old, new, 1))
    return path


STEP = "    next_h = torch.tanh(x @ Wx + prev_h @ Wh + b)\n"
BROKEN = {
    # name: (old text, new text, status of rnn_step_forward's check, words in its detail)
    "syntax": ("def rnn_step_forward(x, prev_h, Wx, Wh, b):", "def rnn_step_forward(x, prev_h, Wx, Wh, b)",
               "error", ["cannot import", "SyntaxError"]),
    "import_raises": ("import math\n", "import math\nraise RuntimeError('boom at import')\n", "error",
                      ["cannot import", "RuntimeError: boom at import"]),
    "exit_at_import": ("import math\n", "import math\nimport sys\nsys.exit(3)\n", "error", ["SystemExit"]),
    "endless": (STEP, "    while True:\n        pass\n" + STEP, "stop", ["stopped after 6 s"]),
    "os_exit": (STEP, "    import os\n    os._exit(7)\n" + STEP, "stop", ["exit status 7"]),
    "returns_none": ("    return next_h, cache\n", "    return None\n", "todo", ["returned None"]),
    "wrong_value": (STEP, "    next_h = torch.tanh(x @ Wx + prev_h @ Wh)\n", "fail", ["relative error"]),
    "raises": (STEP, "    next_h = torch.tanh(x @ Wx + prev_h @ Wh.T[:2] + b)\n", "error",
               ["RuntimeError", "rnn_lstm_captioning.py, line", "in rnn_step_forward"]),
}


@pytest.mark.slow  # runs the self-check: every part, in workers
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_module_is_reported_never_a_crash(tmp_path, name):
    old, new, status, words = BROKEN[name]
    path = _broken_module(tmp_path, name, old, new)
    (part,) = selfcheck(path, timeout=6 if name == "endless" else 300, parts=["rnn"])
    first = part["checks"][0]
    assert first["check"] == "rnn_step_forward matches torch.nn.RNN"
    assert first["status"] == status, first
    for word in words:
        assert word in first["detail"], first
    assert part["earned"] == 0 and part["status"] != "pass"
    assert len(part["checks"]) == 5  # every check is reported, also those after a crash


def test_the_command_reports_bad_input_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "helper.selfcheck", "--module", str(tmp_path / "none.py")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "error: no module to check at" in done.stderr and "Traceback" not in done.stderr


def test_part_status_and_points():
    assert part_status([{"status": "pass"}, {"status": "pass"}]) == "pass"
    assert part_status([{"status": "pass"}, {"status": "todo"}]) == "todo"
    assert part_status([{"status": "todo"}, {"status": "fail"}]) == "fail"
    assert part_status([{"status": "fail"}, {"status": "error"}]) == "error"
    results = [{"key": p.key, "title": p.title, "points": p.points, "earned": p.points if i == 0 else 0,
                "status": "pass" if i == 0 else "todo", "checks": []} for i, p in enumerate(rubric.PARTS)]
    report = format_report(results, REPO_ROOT / MODULE)
    assert f"{rubric.PARTS[0].points:g} of {rubric.TOTAL_POINTS:g} points" in report


def test_every_graded_part_has_public_checks():
    from helper.kit.public_checks import all_checks

    checks = all_checks()
    assert set(checks) == {part.key for part in rubric.PARTS}
    assert all(len(checks[key]) >= 1 for key in checks)
    names = [name for part in checks.values() for name, _ in part]
    assert len(names) == len(set(names))  # names identify checks in the results
