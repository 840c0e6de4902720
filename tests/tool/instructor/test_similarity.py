"""
The similarity report (helper.instructor.similarity, on copydetect): copies rank first,
the kit's own code is discounted, independent solutions score lower than a
copy, bad files are reported, the CSV is ranked, documented and reproducible;
and helper.grade writes it next to its CSV. All but the last test take seconds.
"""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helper.instructor import grade, similarity
from helper.instructor.release import strip_solutions

from _grade_fixtures import GOOD, SELECT
from _kit import reference_source

REPO = Path(__file__).resolve().parents[3]
LOOPS = REPO / "tests" / "solutions" / "loops" / "rnn_lstm_captioning.py"
REFERENCE = reference_source()  # the committed one when another solution is in place
KIT = strip_solutions(REFERENCE)


def renamed(text: str) -> str:
    """The text with its variables renamed and its comments reworded, as a student hiding a copy would."""
    names = ["prev_h", "next_h", "cache", "dnext_h", "h0", "Wx", "Wh", "x", "b", "N", "T", "H", "D", "scores"]
    for i, name in enumerate(names):
        text = re.sub(rf"\b{name}\b", f"my_var_{i}", text)
    return re.sub(r"#.*", "# my own comment", text)


def write(folder: Path, name: str, text) -> Path:
    path = folder / name / "rnn_lstm_captioning.py"
    path.parent.mkdir(parents=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def read_csv(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def pair(pairs: list, a: str, b: str) -> dict:
    return next(p for p in pairs if {p["name_a"], p["name_b"]} == {a, b})


@pytest.fixture
def batch(tmp_path):
    """Four submissions: two independent correct ones, the reference, and a disguised copy of one."""
    typical = GOOD.read_text()
    assert renamed(typical) != typical
    return {
        "typical": write(tmp_path / "subs", "typical", typical),
        "loops": write(tmp_path / "subs", "loops", LOOPS.read_text()),
        "reference": write(tmp_path / "subs", "reference", REFERENCE),
        "copy": write(tmp_path / "subs", "copy", renamed(typical)),
    }


def test_a_renamed_copy_ranks_first_against_its_original(batch, tmp_path):
    pairs = similarity.similarity_report(batch, KIT, tmp_path / "out")
    assert {pairs[0]["name_a"], pairs[0]["name_b"]} == {"copy", "typical"}
    assert pairs[0]["max"] > 0.9 and pairs[0]["shared_tokens"] > 1000
    html = (tmp_path / "out" / "similarity.html").read_text()
    assert "copy" in html and "typical" in html and "highlight-red" in html


def test_independent_solutions_score_lower_than_a_copy(batch, tmp_path):
    pairs = similarity.similarity_report(batch, KIT, tmp_path / "out")
    copied = pair(pairs, "copy", "typical")["max"]
    for a, b in [("typical", "loops"), ("reference", "typical"), ("reference", "loops")]:
        assert pair(pairs, a, b)["max"] < min(similarity.DISPLAY_THRESHOLD, copied - 0.4), (a, b)


def test_the_kits_own_code_is_discounted(tmp_path):
    # Two submissions that are the kit plus code of their own, unlike each other.
    own_a = "\n\ndef extra_a(values):\n    total = 0\n    for v in values:\n        total += v * v\n    return total\n"
    own_b = "\n\nclass ExtraB:\n    def __init__(self, size):\n        self.table = {i: str(i) for i in range(size)}\n"
    modules = {"a": write(tmp_path, "a", KIT + own_a), "b": write(tmp_path, "b", KIT + own_b)}
    discounted = similarity.similarity_report(modules, KIT, tmp_path / "with_kit")[0]
    counted = similarity.similarity_report(modules, "", tmp_path / "without_kit")[0]
    assert counted["max"] > 0.8  # the kit is most of each file: without discounting they look copied
    assert discounted["max"] < 0.1 and discounted["shared_tokens"] < 50


def test_bad_files_are_reported_not_fatal(batch, tmp_path):
    latin = GOOD.read_bytes().replace(b"A typical student", b"A typical \xe9tudiant")
    modules = {
        **batch,
        "latin1": write(tmp_path / "bad", "latin1", latin),
        "empty": write(tmp_path / "bad", "empty", b"  \n"),
        "missing": tmp_path / "bad" / "nobody" / "rnn_lstm_captioning.py",
        "folder": tmp_path / "bad",
    }
    pairs = similarity.similarity_report(modules, KIT, tmp_path / "out")
    latin_pair = pair(pairs, "latin1", "typical")  # still compared: a stray byte must not hide a copy
    assert latin_pair["max"] > 0.9 and "latin1: not UTF-8" in latin_pair["note"]
    rows = read_csv(tmp_path / "out" / "similarity.csv")
    notes = {r["name_a"]: r["note"] for r in rows if r["name_b"] == ""}
    assert set(notes) == {"empty", "missing", "folder"}
    assert "empty" in notes["empty"] and "cannot be read" in notes["missing"] and "cannot be read" in notes["folder"]
    assert rows[-3:] == [r for r in rows if r["name_b"] == ""]  # after every pair
    assert "Not compared" in (tmp_path / "out" / "similarity.html").read_text()


def test_fewer_than_two_readable_modules_still_writes_the_report(tmp_path):
    modules = {"one": write(tmp_path, "one", GOOD.read_text()), "empty": write(tmp_path, "empty", "")}
    assert similarity.similarity_report(modules, KIT, tmp_path / "out") == []
    rows = read_csv(tmp_path / "out" / "similarity.csv")
    assert [(r["name_a"], r["name_b"]) for r in rows] == [("empty", ""), ("one", "")]
    assert "Fewer than two" in (tmp_path / "out" / "similarity.html").read_text()


def test_submission_code_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    hostile = f"open({str(marker)!r}, 'w').write('ran')\nimport os\nos._exit(3)\n" + GOOD.read_text()
    modules = {"hostile": write(tmp_path, "hostile", hostile), "good": write(tmp_path, "good", GOOD.read_text())}
    assert similarity.similarity_report(modules, KIT, tmp_path / "out")[0]["max"] > 0.9
    assert not marker.exists()


def test_the_csv_is_ranked_and_has_the_documented_columns(batch, tmp_path):
    pairs = similarity.similarity_report(batch, KIT, tmp_path / "out")
    path = tmp_path / "out" / "similarity.csv"
    with open(path, newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == similarity.CSV_COLUMNS == [
            "name_a", "name_b", "a_in_b", "b_in_a", "max", "shared_tokens", "note"]
    rows = read_csv(path)
    assert len(rows) == len(pairs) == 6  # every pair of four
    assert [float(r["max"]) for r in rows] == sorted((float(r["max"]) for r in rows), reverse=True)
    for row, p in zip(rows, pairs):
        assert row["name_a"] < row["name_b"] and row["name_a"] == p["name_a"]
        assert float(row["max"]) == max(float(row["a_in_b"]), float(row["b_in_a"])) == p["max"]
        assert 0 <= float(row["a_in_b"]) <= 1 and int(row["shared_tokens"]) >= 0
    assert sorted(os.listdir(tmp_path / "out")) == ["similarity.csv", "similarity.html"]  # no temporary left


@pytest.mark.slow  # runs the report again in another process
def test_the_same_input_gives_the_same_csv_in_another_process(batch, tmp_path):
    # copydetect hashes with Python's str hash, salted per process: the CSV must not depend on it.
    similarity.similarity_report(batch, KIT, tmp_path / "first")
    (tmp_path / "kit.py").write_text(KIT)
    code = ("import sys; from pathlib import Path; from helper.instructor import similarity\n"
            "mods = dict(a.split('=', 1) for a in sys.argv[3:])\n"
            "paths = {n: Path(p) for n, p in mods.items()}\n"
            "similarity.similarity_report(paths, Path(sys.argv[2]).read_text(), sys.argv[1])\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "second"), str(tmp_path / "kit.py")]
                   + [f"{n}={p}" for n, p in batch.items()],
                   check=True, env=env, cwd=REPO, timeout=120)
    first, second = ((tmp_path / d / "similarity.csv").read_bytes() for d in ("first", "second"))
    assert first == second and first.count(b"\n") == 7


def test_the_grader_collects_modules_only_when_wanted(tmp_path):
    subs = [write(tmp_path, n, GOOD.read_text()).parent for n in ("a", "b")]

    def options(*argv):  # (no sandbox: nothing is graded here, and the machine may have none)
        return grade.complete_options(grade.build_parser().parse_args([str(s) for s in argv] + ["--no-sandbox"]))

    assert options(*subs).similarity_modules == {}
    assert options(*subs, "--no-similarity").similarity_modules is None
    assert options(subs[0]).similarity_modules is None  # one submission: nothing to compare


@pytest.mark.slow  # grades a batch
def test_grade_command_writes_the_report_next_to_the_csv(tmp_path, capsys):
    subs = [write(tmp_path / "subs", name, GOOD.read_text()).parent for name in ("alice", "bob")]
    (subs[1] / "rnn_lstm_captioning.py").write_text(renamed(GOOD.read_text()))
    out = tmp_path / "out" / "grades.csv"
    argv = [str(s) for s in subs] + [
        "--out", str(out), "--select", SELECT, "--test-timeout", "5", "--time-limit", "90",
        "--no-progress", "--no-beyond", "--jobs", "2", "--notebook-data", "", "--model-table", ""]
    assert grade.main(argv) == 0
    assert "similarity.csv" in capsys.readouterr().out
    rows = read_csv(out.parent / "similarity.csv")
    assert [(r["name_a"], r["name_b"]) for r in rows] == [("alice", "bob")] and float(rows[0]["max"]) > 0.9
    assert (out.parent / "similarity.html").is_file() and out.is_file()
