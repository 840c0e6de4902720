"""
The hand-in (`python -m helper.submit`, the notebook's last cell): every file
checked first, what is missing said plainly, the zip written atomically with
exactly the module, the notebook and the attention model.
"""
import json
import re
import subprocess
import sys
import zipfile

import nbformat
import pytest
import torch

from _kit import MODULE, NOTEBOOK, REPO_ROOT
from helper.kit.submit import WEIGHTS, ZIP_NAME, SubmissionError, submit, write_submission


def _folder(tmp_path, module=True, notebook=True, weights=True):
    """An assignment folder with the files asked for (a small but real torch checkpoint as weights)."""
    folder = tmp_path / "work"
    folder.mkdir()
    if module:
        (folder / MODULE).write_text("def hello_rnn_lstm_captioning():\n    print('hi')\n")
    if notebook:
        cell = nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")])
        nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(folder / NOTEBOOK))
    if weights:
        (folder / WEIGHTS).parent.mkdir(parents=True)
        torch.save({"model": {"w": torch.ones(2)}}, folder / WEIGHTS)
    return folder


def test_the_zip_holds_exactly_the_three_files(tmp_path, capsys):
    folder = _folder(tmp_path)
    path = submit(folder)
    assert path == folder / ZIP_NAME
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted([MODULE, NOTEBOOK, WEIGHTS])
        for name in archive.namelist():
            assert archive.read(name) == (folder / name).read_bytes()
    assert not list(folder.glob("*.tmp*"))
    out = capsys.readouterr().out
    assert f"wrote {path}" in out and "warning" not in out and "Hand in this file." in out


def test_missing_files_are_all_named_and_nothing_is_written(tmp_path):
    folder = _folder(tmp_path, module=False, weights=False)
    with pytest.raises(SubmissionError) as error:
        write_submission(folder)
    message = str(error.value)
    assert f"{MODULE} is missing" in message
    assert f"{WEIGHTS} is missing (run the training cells of section 7" in message
    assert NOTEBOOK not in message
    assert not (folder / ZIP_NAME).exists()


def test_damaged_files_are_refused_and_an_old_zip_is_kept(tmp_path):
    folder = _folder(tmp_path)
    write_submission(folder)
    before = (folder / ZIP_NAME).read_bytes()
    (folder / NOTEBOOK).write_text("{ not json")
    (folder / WEIGHTS).write_bytes(b"not a torch file")
    with pytest.raises(SubmissionError) as error:
        write_submission(folder)
    assert f"{NOTEBOOK} is damaged" in str(error.value) and f"{WEIGHTS} is damaged" in str(error.value)
    assert (folder / ZIP_NAME).read_bytes() == before


def test_warnings_for_a_syntax_error_and_a_notebook_never_run(tmp_path, capsys):
    folder = _folder(tmp_path)
    (folder / MODULE).write_text("def f(:\n")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), str(folder / NOTEBOOK))
    submit(folder)
    out = capsys.readouterr().out
    assert f"warning: {MODULE} has a syntax error on line 1" in out
    assert f"warning: {NOTEBOOK} has no outputs" in out


@pytest.mark.slow  # runs the hand-in command in a process of its own
def test_the_command(tmp_path):
    folder = _folder(tmp_path, weights=False)
    command = [sys.executable, "-m", "helper.submit", "--folder", str(folder)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "error: cannot write the submission" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "again").mkdir()
    complete = _folder(tmp_path / "again")
    out = tmp_path / "mine.zip"
    done = subprocess.run([*command[:-1], str(complete), "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert zipfile.ZipFile(out).namelist() == [MODULE, NOTEBOOK, WEIGHTS]


def test_the_notebook_ends_with_the_hand_in_cell():
    cell = json.loads((REPO_ROOT / NOTEBOOK).read_text())["cells"][-1]
    source = "".join(cell["source"])
    assert cell["cell_type"] == "code" and source.startswith("# NBVAL_SKIP")
    assert "from helper.kit.submit import submit" in source and "submit()" in source
    # the path the hand-in expects is the one the notebook's training cell writes its attention model to
    training = [c for c in json.loads((REPO_ROOT / NOTEBOOK).read_text())["cells"]
                if re.search(r"^from helper\.[\w.]+ import train$", "".join(c["source"]), re.M)]
    assert any('f"runs/notebook/{cell_type}"' in "".join(cell["source"]) for cell in training)
    assert WEIGHTS == "runs/notebook/attn/best.pt"
