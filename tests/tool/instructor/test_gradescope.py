"""
The Gradescope autograder package (helper.gradescope), tested as Gradescope
runs it: the zip is built, unpacked into a folder laid out like Gradescope's
image (/autograder/source, /autograder/run_autograder), and bubblewrap binds
that folder at /autograder in a root of its own (the system's /usr and /etc,
the Python installation and virtual environment, nothing of the repository).
There setup.sh's Python part runs against the project's environment
(AUTOGRADER_VENV, no package index), then run_autograder grades one hand-in
per fresh copy of the layout: a correct zip (full marks, the leaderboard), the
zeros module, a broken zip, a hand-in without the module, a module that hangs
in a check, one that hangs until the package's deadline, and one that tries to
read the package and write results.json itself. Each results.json is checked
against Gradescope's specification and for what it says.

The runs need bubblewrap (skipped without it) and are in the slow tier; about 3 minutes on 2 cores.
"""
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from helper.common.utils import import_file
from helper.grading.sandbox import python_paths, sandbox_problem
from helper.instructor import gradescope, regrade
from helper.instructor.grade_report import VISIBILITIES

from _cli_data import tiny_checkpoint, write_tiny_data
from _grade_fixtures import GOOD, REPO, ZEROS, broken_module

needs_bwrap = pytest.mark.skipif(bool(sandbox_problem()), reason=f"needs bubblewrap: {sandbox_problem()}")
SELECT = "rnn_step_forward or softmax_loss_sums or step_backward_matches_autograd"
CALL_TIMEOUT = 15
MODEL_POINTS = 3.0  # "bleu1>=0:3": any model that captions earns them
VENV = Path(sys.prefix)  # the project's virtual environment: setup.sh's AUTOGRADER_VENV
HIDDEN_CHECK = "test_rnn_step_backward_matches_autograd_float32"  # no counterpart in the kit's public checks
TOP_KEYS = {"score", "execution_time", "output", "visibility", "stdout_visibility", "extra_data", "tests",
            "leaderboard"}
TEST_KEYS = {"score", "max_score", "status", "name", "number", "output", "tags", "visibility"}


def grade_options(data: Path) -> str:
    return (f"--select '{SELECT}' --no-beyond --notebook-points 0 --test-timeout {CALL_TIMEOUT} --time-limit 150 "
            f"--model-table 'bleu1>=0:{MODEL_POINTS:g}' --model-data {data}")


# ---------------------------------------------------------------------------
# Gradescope's layout, in bubblewrap


def unpack(package: Path, autograder: Path) -> None:
    """Unpack the zip into autograder/source as unzip does (modes kept); run_autograder copied to autograder/."""
    source = autograder / "source"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(source)
        for info in archive.infolist():
            (source / info.filename).chmod((info.external_attr >> 16) & 0o777)
    shutil.copy2(source / "run_autograder", autograder / "run_autograder")


def in_layout(autograder: Path, command: list, env: dict = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run command as root in a root of its own with autograder bound at /autograder (module docstring)."""
    args = ["bwrap", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("bin", "sbin", "lib", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    # The tmpfs first: the Python installation and the venv may lie under /tmp (a clone there, as CI's may be).
    args += ["--tmpfs", "/tmp"]
    for path in python_paths():
        args += ["--ro-bind", str(path), str(path)]
    args += ["--proc", "/proc", "--dev", "/dev", "--bind", str(autograder), "/autograder",
             "--unshare-pid", "--die-with-parent", "--chdir", "/autograder", "--clearenv"]
    for key, value in {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                       "LANG": "C.UTF-8", **(env or {})}.items():
        args += ["--setenv", key, value]
    return subprocess.run([*args, "--", *command], capture_output=True, text=True, timeout=timeout)


def assert_valid(results: dict) -> None:
    """results.json follows Gradescope's specification, and its score is the sum of its tests' scores."""
    assert set(results) <= TOP_KEYS and {"score", "output", "tests"} <= set(results), sorted(results)
    assert isinstance(results["score"], (int, float)) and isinstance(results["output"], str) and results["output"]
    assert isinstance(results["execution_time"], int) and results["execution_time"] >= 0
    assert results["visibility"] in VISIBILITIES and results["stdout_visibility"] == "hidden"
    for test in results["tests"]:
        assert set(test) <= TEST_KEYS and {"name", "score", "max_score", "output", "visibility"} <= set(test), test
        assert 0 <= test["score"] <= test["max_score"] and test["visibility"] in VISIBILITIES
        assert test["status"] in ("passed", "failed") and isinstance(test["output"], str)
    assert results["score"] == pytest.approx(sum(t["score"] for t in results["tests"]), abs=1e-3)
    for entry in results.get("leaderboard", []):
        assert set(entry) == {"name", "value", "order"} and entry["order"] in ("asc", "desc")
        assert isinstance(entry["value"], (int, float))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The package built (with a model data file of its own) and unpacked as Gradescope's image."""
    root = tmp_path_factory.mktemp("gradescope")
    data = write_tiny_data(root / "tiny.pt", num_val=6)
    package = root / "autograder.zip"
    assert gradescope.main([str(package), "--grade-options", grade_options(data), "--deadline", "300"]) == 0
    unpack(package, root / "image")
    return {"root": root, "package": package, "image": root / "image", "data": data, "runs": {}}


@pytest.fixture(scope="module")
def image(package):
    """The package's image after setup.sh's Python part (against this environment, without a package index)."""
    setup = in_layout(package["image"], ["bash", "/autograder/source/setup.sh", "python"],
                      env={"AUTOGRADER_VENV": str(VENV), "PIP_NO_INDEX": "1"}, timeout=300)
    print(setup.stdout, setup.stderr)
    return {**package, "setup": setup}


def hand_in_zip(root: Path, module_text: str) -> bytes:
    """The bytes of a hand-in zip as helper.submit writes it: the module and the trained model."""
    folder = root / "zip-contents"
    folder.mkdir(exist_ok=True)
    (folder / "rnn_lstm_captioning.py").write_text(module_text)
    good = import_file(GOOD, "good_solution_for_gradescope_tests", register=False)
    tiny_checkpoint(good, folder / "best.pt")
    # The state dict as a plain dict: the worker's protocol refuses an OrderedDict (helper.grading.protocol), which
    # torch.load gives for a state dict, and helper.instructor.grade_model sends it as it is.
    checkpoint = torch.load(folder / "best.pt", weights_only=True)
    torch.save({**checkpoint, "model": dict(checkpoint["model"])}, folder / "best.pt")
    archive_path = root / "hand-in.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.write(folder / "rnn_lstm_captioning.py", "rnn_lstm_captioning.py")
        archive.write(folder / "best.pt", "runs/notebook/attn/best.pt")
    return archive_path.read_bytes()


ATTACK = '''

_LOG = []


def _attempt(label, action):
    try:
        result = action()
        _LOG.append(f"{label}: DONE {str(result)[:60]}")
    except Exception as error:  # noqa: BLE001 - the log says what stopped it
        _LOG.append(f"{label}: {type(error).__name__}")


def _attack():
    import os
    _LOG.clear()
    _attempt("write results.json", lambda: open("/autograder/results/results.json", "w").write('{"score": 1000}'))
    _attempt("read gradescope.json", lambda: open("/autograder/source/gradescope.json").read())
    _attempt("read the checks", lambda: open("/autograder/source/tests/grading/test_rnn.py").read())
    _attempt("list the grader's data", lambda: os.listdir("/autograder/source/grader-data"))
    _attempt("list /autograder", lambda: os.listdir("/autograder"))
    found = [os.path.join(r, n) for top in ("/tmp", "/home", "/root") for r, _, names in os.walk(top) for n in names
             if n in ("results.json", "gradescope.json", "test_rnn.py", "tiny.pt")]
    _LOG.append(f"found: {found}")


_attack()


def rnn_step_forward(*args, **kwargs):
    _attack()
    raise RuntimeError("attack log: " + " | ".join(_LOG))
'''


def hand_ins(root: Path) -> dict:
    """Gradescope's /autograder/submission of each hand-in: {name: {file name: bytes}}."""
    hangs_always = GOOD.read_text() + "\n\ndef rnn_step_forward(*args, **kwargs):\n    while True:\n        pass\n"
    return {
        "correct": {"rnn_lstm_captioning_submission.zip": hand_in_zip(root, GOOD.read_text())},
        "zeros": {"rnn_lstm_captioning.py": ZEROS.read_bytes()},
        "broken_zip": {"rnn_lstm_captioning_submission.zip": b"PK\x03\x04 this is not a zip file"},
        "no_module": {"notes.txt": b"I will hand in the module tomorrow"},
        "hangs_in_a_check": {"rnn_lstm_captioning.py": broken_module("hangs_in_one_check").encode()},
        "hangs_until_the_deadline": {"rnn_lstm_captioning.py": hangs_always.encode()},
        "reads_the_package_and_writes_results": {"rnn_lstm_captioning.py": (GOOD.read_text() + ATTACK).encode()},
    }


@pytest.fixture(scope="module")
def graded(image):
    """graded(name) -> (results.json, run_autograder's output) of that hand-in, each run once in a fresh layout."""

    def run(name: str):
        if name not in image["runs"]:
            autograder = image["root"] / "runs" / name
            shutil.copytree(image["image"], autograder, symlinks=True)
            (autograder / "submission").mkdir()
            (autograder / "results").mkdir()
            for file_name, content in hand_ins(image["root"])[name].items():
                (autograder / "submission" / file_name).write_bytes(content)
            if name == "hangs_until_the_deadline":  # an instructor's package with a 40 s deadline
                config_file = autograder / "source" / gradescope.CONFIG
                config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "deadline": 40}))
            completed = in_layout(autograder, ["/autograder/run_autograder"], timeout=600)
            print(name, completed.stdout[-3000:], completed.stderr[-3000:])
            assert completed.returncode == 0, completed.stderr
            results = json.loads((autograder / "results" / "results.json").read_text())
            image["runs"][name] = (results, completed.stdout)
        return image["runs"][name]

    return run


def checks_by_function(results: dict) -> dict:
    return {t["name"].split("::")[-1]: t for t in results["tests"]}


# ---------------------------------------------------------------------------
# The package


def test_the_package_has_setup_and_run_autograder_at_its_top_and_no_solution(package):
    with zipfile.ZipFile(package["package"]) as archive:
        infos = {i.filename: i for i in archive.infolist()}
        config = json.loads(archive.read(gradescope.CONFIG))
    for name in ("setup.sh", "run_autograder"):
        assert (infos[name].external_attr >> 16) & 0o777 == 0o755
    assert {"requirements.txt", "pytest.ini", "tests/conftest.py", "tests/grading/test_rnn.py",
            "helper/instructor/grade.py", "grader-data/tiny.pt"} <= set(infos)
    assert not [n for n in infos if n.endswith("rnn_lstm_captioning.py") or n.startswith(("tests/solutions/",
                                                                                           "tests/tool/", "datasets/"))]
    assert not [n for n in infos if n.startswith("tests/beyond/")]  # --no-beyond: not needed
    assert config["suite"] == regrade.suite_stamp(package["image"] / "source") and config["deadline"] == 300
    assert "grader-data/tiny.pt" in config["grade_options"]


def test_the_package_builds_from_the_files_of_a_fresh_clone(package, tmp_path):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    clone = tmp_path / "clone"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    here = tmp_path / "from-here.zip"  # built from this repository at the same time (its tests may be edited)
    assert gradescope.main([str(here), "--grade-options", grade_options(package["data"])]) == 0
    out = tmp_path / "from-clone.zip"
    subprocess.run([str(VENV / "bin" / "python"), "-m", "helper.gradescope", str(out),
                    "--grade-options", grade_options(package["data"]), "--deadline", "300"], cwd=clone, check=True)
    assert sorted(zipfile.ZipFile(out).namelist()) == sorted(zipfile.ZipFile(here).namelist())
    config = json.loads(zipfile.ZipFile(out).read(gradescope.CONFIG))
    assert config["suite"]["digest"] == regrade.suite_stamp(clone)["digest"]


@pytest.mark.parametrize("options, why", [("--out x.csv", "run_autograder sets --out"),
                                          ("--no-such-option", "does not accept"),
                                          ("--model-table 'accuracy>=1:3'", "bad threshold row")])
def test_bad_grade_options_are_refused_when_the_package_is_built(tmp_path, capsys, options, why):
    assert gradescope.main([str(tmp_path / "a.zip"), f"--grade-options={options}"]) == 1
    assert why in capsys.readouterr().err and not (tmp_path / "a.zip").exists()


# ---------------------------------------------------------------------------
# Gradescope's runs


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_setup_s_python_part_checks_the_environment_and_records_the_interpreter(image):
    setup = image["setup"]
    assert setup.returncode == 0, setup.stderr
    assert "sandbox: bubblewrap works" in setup.stdout and "setup done: Python 3.11" in setup.stdout
    recorded = (image["image"] / "source" / "autograder-python").read_text().strip()
    assert recorded.startswith(str(VENV))


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_a_correct_hand_in_gets_full_marks_and_its_model_on_the_leaderboard(graded):
    results, stdout = graded("correct")
    assert_valid(results)
    assert results["score"] == pytest.approx(sum(t["max_score"] for t in results["tests"]), abs=1e-3)
    assert results["score"] == pytest.approx(20 + 10 + MODEL_POINTS)
    extra = results["extra_data"]
    assert extra["status"] == "graded" and extra["suite_digest"] == extra["package_suite_digest"]
    model = next(t for t in results["tests"] if t["name"] == "model")
    assert model["score"] == MODEL_POINTS and "bleu4" in model["output"]
    board = {e["name"]: e for e in results["leaderboard"]}
    assert set(board) == {"BLEU-4", "CIDEr-D", "exact matches"} and all(e["order"] == "desc" for e in board.values())
    assert "Grade of submission" in stdout  # the whole feedback, for the instructors (stdout is hidden)


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_public_checks_are_visible_at_once_and_the_others_after_the_due_date(graded):
    results, _ = graded("correct")
    tests = checks_by_function(results)
    visible = {n for n, t in tests.items() if t["visibility"] == "visible"}
    assert any(n.startswith("test_rnn_step_forward_is_tanh") for n in visible)
    assert any(n.startswith("test_temporal_softmax_loss_sums") for n in visible)
    assert tests[HIDDEN_CHECK]["visibility"] == "after_due_date" and tests["model"]["visibility"] == "after_due_date"
    assert results["visibility"] == "visible" and "Results shown after the due date: " in results["output"]


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_the_zeros_module_scores_nothing(graded):
    results, _ = graded("zeros")
    assert_valid(results)
    assert results["score"] == 0 and len(results["tests"]) == 6  # five checks and the model line
    assert "no trained model" in checks_by_function(results)["model"]["output"]
    assert {e["name"]: e["value"] for e in results["leaderboard"]} == {"BLEU-4": 0, "CIDEr-D": 0, "exact matches": 0}


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
@pytest.mark.parametrize("name, why", [("broken_zip", "is not a folder, a .py file or a zip"),
                                       ("no_module", "no rnn_lstm_captioning.py in the submission")])
def test_a_broken_or_missing_hand_in_gets_a_valid_result_that_says_what_happened(graded, name, why):
    results, _ = graded(name)
    assert_valid(results)
    assert results["score"] == 0 and results["extra_data"]["status"] == "missing"
    assert why in results["output"], results["output"]


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_a_check_that_hangs_costs_that_check_and_the_others_keep_their_points(graded):
    results, _ = graded("hangs_in_a_check")
    assert_valid(results)
    tests = checks_by_function(results)
    hung = [n for n, t in tests.items() if f"stopped after {CALL_TIMEOUT} s" in t["output"]]
    assert "test_rnn_step_forward_is_tanh_of_the_two_affine_maps[float32]" in hung
    assert all(t["score"] == t["max_score"] for n, t in tests.items() if n not in hung + ["model"])
    assert results["extra_data"]["status"] == "partial" and 0 < results["score"]


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_a_grading_stopped_at_the_deadline_keeps_the_points_of_the_finished_checks(graded):
    results, _ = graded("hangs_until_the_deadline")
    assert_valid(results)
    assert results["extra_data"]["status"] == "time-out"
    assert "time limit (40 s)" in results["output"] or "time limit (" in results["output"], results["output"]
    loss = [t for n, t in checks_by_function(results).items() if n.startswith("test_temporal_softmax_loss")]
    assert len(loss) == 2 and all(t["score"] == t["max_score"] == 5 for t in loss)
    assert results["score"] == pytest.approx(10.0) and results["execution_time"] < 120


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_the_submission_can_neither_write_results_json_nor_read_the_package(graded):
    results, _ = graded("reads_the_package_and_writes_results")
    assert_valid(results)
    log = checks_by_function(results)["test_rnn_step_forward_is_tanh_of_the_two_affine_maps[float32]"]["output"]
    assert "attack log" in log and "DONE" not in log, log
    for step in ("write results.json", "read gradescope.json", "read the checks", "list the grader's data",
                 "list /autograder"):
        assert f"{step}: FileNotFoundError" in log or f"{step}: PermissionError" in log, (step, log)
    assert "found: []" in log
    # The result is the grader's: the two loss checks passed, the attacked rnn checks did not.
    assert results["score"] == pytest.approx(10.0) and results["extra_data"]["status"] == "graded"


@needs_bwrap
@pytest.mark.slow  # runs setup.sh or run_autograder in Gradescope's layout
def test_a_grader_that_cannot_start_still_leaves_a_valid_result(image, tmp_path):
    autograder = tmp_path / "autograder"
    shutil.copytree(image["image"], autograder, symlinks=True)
    (autograder / "submission").mkdir()
    (autograder / "source" / "autograder-python").write_text("/nonexistent/python\n")
    completed = in_layout(autograder, ["/autograder/run_autograder"], timeout=120)
    assert completed.returncode == 0
    results = json.loads((autograder / "results" / "results.json").read_text())
    assert results["score"] == 0 and "failed to start" in results["output"]


def test_without_a_sandbox_the_runner_refuses_and_says_so(tmp_path, monkeypatch):
    from helper.instructor import grade

    monkeypatch.setattr(grade, "sandbox_problem", lambda: "bubblewrap is not installed")
    monkeypatch.setattr(gradescope, "sandbox_problem", lambda: "bubblewrap is not installed")
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)
    (root / "submission").mkdir()
    (root / "submission" / "rnn_lstm_captioning.py").write_text(GOOD.read_text())
    config = gradescope.config_of(gradescope.build_parser().parse_args(["x.zip"]))
    (root / "source" / gradescope.CONFIG).write_text(json.dumps({**config, "suite": regrade.suite_stamp()}))
    assert gradescope.machine_main(["run", "--root", str(root)]) == 0
    results = json.loads((root / "results" / "results.json").read_text())
    assert_valid(results)
    assert results["score"] == 0 and "sandbox does not work" in results["output"]


def test_a_broken_package_still_leaves_a_valid_result(tmp_path):
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)  # no gradescope.json
    assert gradescope.machine_main(["run", "--root", str(root)]) == 1
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0 and "The autograder failed" in results["output"]
