"""
Hostile submissions against the batch grader (helper.grade), graded as root
in the sandbox: each is the zeros module (tests/solutions/self_grading) plus
one attack, run at import and again during the checks (_grade_fixtures.ATTACKS).
Whatever it tries, a hostile submission scores no more than the zeros
module, the correct submission graded beside it keeps full marks, and the
grader's machine (the repository, the virtual environment, the network,
files outside the scratch folders, other submissions) is left as it was.

Three batches: every attack with --jobs 2 (the correct one graded at the same
time as the attack on other hand-ins); the process and mount attacks with
--jobs 1 (the correct one graded next, by the same sandbox user); trained
models and notebooks that go after the grader's references. Each attack's
log (what it could reach) is in its rnn check's message: pytest -s prints them.

About 3 minutes on 2 cores (most of it the three batches); the batches are skipped where
bubblewrap does not work.
"""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from helper.common.utils import import_file
from helper.grading.sandbox import sandbox_problem
from helper.instructor import handin

from _cli_data import tiny_checkpoint, write_tiny_data
from _grade_fixtures import (ATTACKS, FULL_MARKS, GOOD, PLANTED, REPO, ZEROS, attack_context, batch_options,
                             clear_keyrings, code_cell, grade_batch, hostile_module, model_metrics, model_module,
                             tree_digest, write_checkpoint_bomb, write_module, write_notebook, write_notebooks,
                             write_zip_bomb)

# The slow tier (make test-all): batches of hostile submissions in the sandbox.
pytestmark = pytest.mark.slow

FIRST_UID = 61000  # helper.instructor.grade.FIRST_UID: the batch's sandbox users
PARTS = list(FULL_MARKS)
# The --jobs 2 batch: the correct submission first and the attack on other hand-ins second, so that
# they are graded at the same time.
JOBS_2 = ["runs_or_overwrites_a_classmates_hand_in", "forges_the_judges_records", "patches_pytests_reports",
          "replaces_the_grading_helpers", "enters_a_torch_function_mode_that_says_equal",
          "imports_the_repositorys_reference", "spawns_300_processes", "kills_every_process_it_can", "fills_the_disk",
          "phones_home", "overwrites_a_file_outside_its_scratch"]
# The --jobs 1 batch: the correct submission graded last, by the sandbox user the attacks ran as.
JOBS_1 = ["spawns_300_processes", "kills_every_process_it_can", "remounts_and_writes_into_the_repository"]
assert set(JOBS_2) | set(JOBS_1) == set(ATTACKS)


def require_sandbox() -> None:
    """Skip where bubblewrap does not work: hostile submissions are graded in the sandbox only."""
    if sandbox_problem():
        pytest.skip(f"needs the grader's sandbox (bubblewrap): {sandbox_problem()}")


def leftover_sleepers() -> list:
    """Processes of the sandbox users still running `sleep 600` (what spawns_300_processes starts)."""
    found = []
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            uid = int(re.search(r"^Uid:\s+(\d+)", Path(status).read_text(), re.M).group(1))
            command = Path(status).with_name("cmdline").read_bytes().split(b"\0")
        except (OSError, AttributeError):
            continue
        if FIRST_UID <= uid < FIRST_UID + 8 and command[:2] == [b"sleep", b"600"]:
            found.append(int(Path(status).parent.name))
    return found


@pytest.fixture(scope="module")
def listeners():
    """A TCP and a UDP socket listening on every address of this machine (127.0.0.1 included)."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("0.0.0.0", 0))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    yield tcp, udp
    tcp.close()
    udp.close()


@pytest.fixture(scope="module")
def jobs2(tmp_path_factory, listeners):
    """Every attack but the mounts, the zeros module, a zip bomb and the correct module, with --jobs 2."""
    require_sandbox()
    root = tmp_path_factory.mktemp("hostile")
    tcp, udp = listeners
    context = attack_context(root, port=tcp.getsockname()[1], udp_port=udp.getsockname()[1])
    Path(context["decoy"]).write_text("the grader's own")
    Path(context["data_dir"]).mkdir()
    subs = root / "subs"
    sources = [write_module(subs, "good", GOOD.read_text())]
    sources += [write_module(subs, name, hostile_module(name, context)) for name in JOBS_2]
    sources.append(write_module(subs, "zeros", ZEROS.read_text()))
    bomb = write_zip_bomb(subs / "zip_bomb.zip", handin.MAX_MEMBER_BYTES + (1 << 20))
    sources.append(bomb)
    graded = grade_batch(sources, root / "out" / "grades.csv", batch_options(jobs=2))
    print(graded.printed)
    return {"graded": graded, "context": context, "root": root, "bomb": bomb}


@pytest.fixture(scope="module")
def jobs1(tmp_path_factory):
    """The process and mount attacks, then the correct module, with --jobs 1; helper/ and tests/ digested around it."""
    require_sandbox()
    root = tmp_path_factory.mktemp("hostile1")
    context = attack_context(root)
    subs = root / "subs"
    sources = [write_module(subs, name, hostile_module(name, context)) for name in JOBS_1]
    sources.append(write_module(subs, "good", GOOD.read_text()))
    before = tree_digest(REPO / "helper", REPO / "tests")
    try:
        graded = grade_batch(sources, root / "out" / "grades.csv", batch_options(jobs=1))
        after = tree_digest(REPO / "helper", REPO / "tests")
    finally:  # should the sandbox ever leak, take out what the attack wrote
        for path in (Path(p) for p, mode in context["planted"] if mode == "a"):
            text = path.read_text()
            if PLANTED in text:
                path.write_text(text.replace(f"\n# {PLANTED}\n", ""))
        planted = [Path(p) for p, mode in context["planted"] if mode == "w" and Path(p).exists()]
        for path in planted:
            path.unlink()
    print(graded.printed)
    return {"graded": graded, "context": context, "before": before, "after": after, "planted": planted}


def attack_log(graded, name: str) -> str:
    """What the hostile module's attack came to, as its rnn check reports it."""
    messages = graded.messages(name)
    assert messages, f"{name}: no rnn check in results.json"
    return messages[0]


# ---------------------------------------------------------------------------
# The --jobs 2 batch


def test_the_correct_submission_keeps_full_marks_beside_every_attack(jobs2):
    graded = jobs2["graded"]
    assert graded.exit_code == 0, graded.printed
    good = graded.rows["good"]
    assert good["status"] == "graded" and good["reason"] == "", good
    assert {part: graded.points("good", part) for part in PARTS} == FULL_MARKS
    assert good["sandbox"] == "bubblewrap"


def test_the_zeros_module_is_the_baseline_and_scores_nothing(jobs2):
    graded = jobs2["graded"]
    assert graded.points("zeros") == 0 and graded.rows["zeros"]["status"] == "graded"


@pytest.mark.parametrize("name", JOBS_2)
def test_an_attack_scores_no_more_than_the_zeros_module(jobs2, name):
    graded = jobs2["graded"]
    log = attack_log(graded, name)
    print(f"\n{name}: {log}")
    assert "attack log: at import ->" in log, "the hostile module did not import, so the attack proves nothing"
    for part in PARTS:
        assert graded.points(name, part) <= graded.points("zeros", part), (part, log)
    assert graded.points(name) <= graded.points("zeros")
    assert graded.rows[name]["sandbox"] == "bubblewrap"


# What each attack saw from inside the sandbox (its own log).
SEEN = {
    "forges_the_judges_records": ["wrote into []", "grade files found [], forged []"],
    "patches_pytests_reports": ["patched TestReport.from_item_and_call"],  # in its own process: nothing to fool
    "replaces_the_grading_helpers": ["grading modules found: []"],
    "enters_a_torch_function_mode_that_says_equal": ["allclose(0, 1) now True"],  # in its process only
    "imports_the_repositorys_reference": ["0 other modules readable: []"],
    "runs_or_overwrites_a_classmates_hand_in": ["others found: []; overwritten: []"],
    "spawns_300_processes": ["started 300 processes", "Resource temporarily unavailable"],
    "kills_every_process_it_can": ["its parent: PermissionError", "pid 1: PermissionError"],
    "fills_the_disk": ["/tmp: 5 files of 64 MB", "Read-only file system", "No space left on device"],
    "phones_home": ["tcp 127.0.0.1: ConnectionRefusedError"],
    "overwrites_a_file_outside_its_scratch": ["overwrite: FileNotFoundError", "remove: FileNotFoundError"],
}


@pytest.mark.parametrize("name", JOBS_2)
def test_inside_the_sandbox_an_attack_finds_nothing_of_the_grader(jobs2, name):
    log = attack_log(jobs2["graded"], name)
    for seen in SEEN[name]:
        assert seen in log, log


def test_the_judges_records_cannot_be_forged(jobs2):
    graded = jobs2["graded"]
    results = graded.results("forges_the_judges_records")
    assert not any("forged" in t["name"] for t in results["tests"])
    assert results["score"] == 0 and len(results["tests"]) == 4  # the four selected checks, nothing more


def test_a_classmates_hand_in_graded_at_the_same_time_is_neither_run_nor_overwritten(jobs2):
    graded = jobs2["graded"]
    assert graded.points("runs_or_overwrites_a_classmates_hand_in") == 0
    assert graded.points("good") == sum(FULL_MARKS.values())
    assert (jobs2["root"] / "subs" / "good" / "rnn_lstm_captioning.py").read_text() == GOOD.read_text()


def test_a_network_listener_on_the_graders_machine_receives_nothing(jobs2, listeners):
    tcp, udp = listeners
    tcp.settimeout(0.5)
    udp.settimeout(0.5)
    with pytest.raises(socket.timeout):
        connection, address = tcp.accept()
        connection.close()
        pytest.fail(f"a submission connected from {address}")
    with pytest.raises(socket.timeout):
        data, address = udp.recvfrom(1000)
        pytest.fail(f"a submission sent {data!r} from {address}")


def test_a_file_outside_the_scratch_folders_is_unchanged(jobs2):
    decoy = Path(jobs2["context"]["decoy"])
    assert decoy.read_text() == "the grader's own"
    assert decoy.stat().st_mode & 0o777 != 0o777


def test_gigabytes_written_by_a_submission_never_reach_the_graders_disk(jobs2):
    assert jobs2["graded"].points("fills_the_disk") == 0
    assert not glob.glob("/tmp/fill-*.bin") and not glob.glob(str(jobs2["root"] / "**" / "fill-*.bin"), recursive=True)
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "grade-fills_the_disk-*"))  # its scratch is gone


def test_a_zip_bomb_is_refused_with_a_reason_and_leaves_nothing_behind(jobs2):
    row = jobs2["graded"].rows["zip_bomb"]
    assert row["status"] == "missing" and float(row["total"]) == 0
    assert f"larger than {handin.MAX_MEMBER_BYTES >> 20} MB" in row["reason"], row["reason"]
    assert jobs2["bomb"].stat().st_size < 5 << 20  # a small zip: the grader stopped unpacking it at the cap
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "grade-zip_bomb-*"))


def test_hundreds_of_processes_and_kill_minus_one_leave_the_batch_whole(jobs2):
    graded = jobs2["graded"]
    assert len(graded.rows) == len(JOBS_2) + 3  # every hand-in has its row
    assert all(row["status"] in ("graded", "missing") for row in graded.rows.values()), graded.rows
    assert leftover_sleepers() == []


def test_no_scratch_folder_of_the_batch_is_left(jobs2):
    names = JOBS_2  # names no other batch uses ("good" or "zeros" may be graded elsewhere meanwhile)
    assert [p for name in names for p in glob.glob(os.path.join(tempfile.gettempdir(), f"grade-{name}-*"))] == []


# ---------------------------------------------------------------------------
# The --jobs 1 batch: the sandbox user of the attacks grades the correct module next


def test_after_process_attacks_the_next_submission_of_the_same_sandbox_user_keeps_full_marks(jobs1):
    graded = jobs1["graded"]
    assert graded.exit_code == 0, graded.printed
    assert {part: graded.points("good", part) for part in PARTS} == FULL_MARKS
    assert graded.rows["good"]["status"] == "graded"
    assert leftover_sleepers() == []


@pytest.mark.parametrize("name", JOBS_1)
def test_an_attack_graded_before_the_correct_module_by_the_same_user_scores_nothing(jobs1, name):
    graded = jobs1["graded"]
    log = attack_log(graded, name)
    print(f"\n{name}: {log}")
    assert "attack log:" in log
    assert graded.points(name) == 0


def test_remounting_and_unmounting_are_refused_even_in_a_user_namespace_of_its_own(jobs1):
    log = attack_log(jobs1["graded"], "remounts_and_writes_into_the_repository")
    assert "in a new user namespace: unshare:" in log, log  # where it may: every capability there, and still
    assert re.findall(r"mount\(8\) exit (\d+)", log) and "exit 0" not in log, log
    assert "remount" in log and not re.search(r"(remount [^:|;]+|mount\(2\)|umount2\(2\)):? done", log), log
    assert "at import -> written: []" in log, log


def test_the_repository_and_the_virtual_environment_are_unchanged_by_a_submission(jobs1):
    assert jobs1["planted"] == [], f"the sandbox let a submission create {jobs1['planted']}"
    before, after = jobs1["before"], jobs1["after"]
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    # A file the submission changed carries its marker or belongs to its sandbox user; other changes come from
    # whoever edits the repository meanwhile (none where nobody does: then the digests are equal).
    by_a_submission = [k for k in changed if (REPO / k).is_file() and (
        PLANTED in (REPO / k).read_text(errors="replace") or (REPO / k).stat().st_uid >= FIRST_UID)]
    assert by_a_submission == [], f"the sandbox let a submission change {by_a_submission}"
    if changed:
        warnings.warn(f"helper/ or tests/ changed during the batch, not by a submission: {changed}")
    marked = [p for p in (REPO / "helper").rglob("*.py") if PLANTED in p.read_text(errors="replace")]
    marked += [p for p in (REPO / "tests").rglob("*.py") if PLANTED in p.read_text(errors="replace")
               and p.name != "_grade_fixtures.py"]
    assert marked == []


# ---------------------------------------------------------------------------
# Trained models and notebooks that go after the grader's references


MODEL_TABLE = "exact>=0.99:10,bleu1>=0:1"  # any model scores 1 point; one that captions every image exactly, 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """
    The grader scores models on its own data (--model-data, in the data folder that notebooks read):
    a plain model, models that go after the references, and a notebook of a single cell.
    """
    require_sandbox()
    root = tmp_path_factory.mktemp("models")
    data_dir = root / "data"
    data_dir.mkdir()
    data = write_tiny_data(data_dir / "tiny.pt", num_val=6)
    forged = write_tiny_data(root / "forged_data.pt", num_val=2, seed=1)  # as if the submission had written it
    reference, student = write_notebooks(root)
    single = write_notebook(root / "single.ipynb", [code_cell("print('all done')", ["all done\n"], 1, "only")])
    good = import_file(GOOD, "good_solution_for_hostile_models", register=False)
    subs = root / "subs"
    context = {"data_file": str(data), "data_dir": str(data_dir), "forged_data": str(forged), "handin": str(subs)}

    def submission(name, text, notebook=None, data_path=data):
        folder = write_module(subs, name, text)
        if notebook is not None:
            shutil.copy(notebook, folder / "rnn_lstm_captioning.ipynb")
        tiny_checkpoint(good, folder / "runs/notebook/attn/best.pt", data_path=str(data_path))
        return folder

    sources = [
        submission("plain", GOOD.read_text()),
        submission("opens_the_graders_data", model_module("opens_the_graders_data", context)),
        submission("rewrites_its_weights_and_names_its_own_data",
                   model_module("rewrites_its_weights_and_names_its_own_data", context), data_path=forged),
        submission("passes_references_from_its_notebook_to_its_model",
                   model_module("passes_references_from_its_notebook_to_its_model", context), notebook=student),
        submission("notebook_of_a_single_cell", GOOD.read_text(), notebook=single),
    ]
    weights = {s.name: (s / "runs/notebook/attn/best.pt").read_bytes() for s in sources}
    options = batch_options(jobs=2) + ["--model-table", MODEL_TABLE, "--model-data", str(data), "--notebook-points",
                                       "10", "--reference-notebook", str(reference)]
    uids = range(FIRST_UID, FIRST_UID + 2)
    clear_keyrings(uids)  # nothing left by an earlier run
    try:
        graded = grade_batch(sources, root / "out" / "grades.csv", options, env={"CAPTIONING_DATA_DIR": str(data_dir)})
    finally:
        clear_keyrings(uids)
    print(graded.printed)
    return {"graded": graded, "weights": weights, "sources": sources, "data": data}


def test_the_plain_model_is_scored_on_the_graders_data(models):
    graded = models["graded"]
    assert graded.exit_code == 0, graded.printed
    assert graded.rows["plain"]["status"] == "graded", graded.rows["plain"]
    metrics = model_metrics(graded.feedback("plain"))
    assert set(metrics) >= {"bleu1", "bleu4", "cider", "exact"} and metrics["exact"] < 0.99
    assert graded.points("plain", "model") == 1


@pytest.mark.parametrize("name", ["opens_the_graders_data", "rewrites_its_weights_and_names_its_own_data"])
def test_a_model_that_goes_after_the_references_scores_what_the_plain_model_scores(models, name):
    graded = models["graded"]
    assert graded.rows[name]["status"] == "graded", graded.rows[name]
    assert model_metrics(graded.feedback(name)) == model_metrics(graded.feedback("plain"))
    assert graded.points(name, "model") == graded.points("plain", "model")


def test_a_notebook_kernel_cannot_hand_the_graders_references_to_the_model_worker(models):
    """
    The notebook's kernel reads the data folder (CAPTIONING_DATA_DIR, where the grader's --model-data lies
    too) and runs as the same sandbox user as the model's worker after it. This module, imported by the
    notebook, keeps the references in that user's kernel keyring (add_key), and its sample() reads them
    back there (keyctl): the model must still score what the plain model scores.
    """
    graded = models["graded"]
    name = "passes_references_from_its_notebook_to_its_model"
    assert graded.rows[name]["status"] == "graded", graded.rows[name]
    assert graded.points(name, "notebook") == 5  # the notebook ran, and imported the module in the kernel
    assert model_metrics(graded.feedback(name)) == model_metrics(graded.feedback("plain"))
    assert graded.points(name, "model") == graded.points("plain", "model")


def test_a_hand_in_s_weights_file_is_read_before_its_code_runs_and_never_written(models):
    for source in models["sources"]:
        assert (source / "runs/notebook/attn/best.pt").read_bytes() == models["weights"][source.name]


def test_a_notebook_of_a_single_cell_scores_nothing_of_the_notebook_points(models):
    graded = models["graded"]
    assert graded.points("notebook_of_a_single_cell", "notebook") == 0
    feedback = graded.feedback("notebook_of_a_single_cell")
    assert "Notebook: 0.00 / 10" in feedback and "6 of the reference's 6 checked cells are missing" in feedback
    assert graded.points("notebook_of_a_single_cell") == sum(FULL_MARKS.values()) + 1  # checks and model kept


def test_the_peeking_model_would_caption_every_image_exactly_where_it_can_read_the_data(models):
    """The control of the model attacks: in this process, with the data readable, the attack works."""
    import torch

    from helper.instructor.grade_model import score_captions, validation_split

    source = models["sources"][1]
    module = import_file(source / "rnn_lstm_captioning.py", "peeking_model_control", register=False)
    checkpoint = torch.load(source / "runs/notebook/attn/best.pt", weights_only=True)
    model = module.CaptioningRNN(checkpoint["vocab"]["token_to_idx"], image_encoder_pretrained=False,
                                 **checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    data = torch.load(models["data"], weights_only=True)
    split = validation_split(data, None)
    with torch.no_grad():
        words = model.sample(split["images"], max_length=16)
    words = words[0] if isinstance(words, tuple) else words
    assert score_captions(words.long(), split["references"], data["vocab"]["idx_to_token"])["exact"] == 1.0


# ---------------------------------------------------------------------------
# A hand-in that goes after the grader's own process (no sandbox needed: no code of it runs)


# The peak memory of this process (VmHWM: ru_maxrss would count the parent's peak after a vfork).
UNPACK_AND_MEASURE = """
import json, re, sys
from pathlib import Path
from helper.instructor import handin
peak = lambda: int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) >> 10
before = peak()
files = handin.unpack(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({"grew_mb": peak() - before, "loaded": files["checkpoint"] is not None, "problems": files["problems"]}))
"""


def test_a_checkpoint_that_unpacks_past_the_cap_is_refused_before_the_grader_holds_it(tmp_path):
    """The weights file is read in the grader's own process, as root and without limits: a deflated .pt of
    under a megabyte that unpacks to more than the cap on a hand-in's member must not reach its memory."""
    folder = tmp_path / "hand-in"
    write_module(tmp_path, "hand-in", GOOD.read_text())
    weights = folder / "runs" / "notebook" / "attn" / "best.pt"
    weights.parent.mkdir(parents=True)
    write_checkpoint_bomb(weights, handin.MAX_MEMBER_BYTES + (16 << 20))
    assert weights.stat().st_size < 4 << 20
    completed = subprocess.run([sys.executable, "-c", UNPACK_AND_MEASURE, str(folder), str(tmp_path / "work")],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    outcome = json.loads(completed.stdout.splitlines()[-1])
    assert not outcome["loaded"] and any("best.pt" in p for p in outcome["problems"]), outcome
    assert outcome["grew_mb"] < 200, f"the grader's process grew by {outcome['grew_mb']} MB: {outcome}"
