"""
The notebook's Colab branch, rehearsed offline on the CPU (issue 13).

The notebook runs from its first cell to its last, unchanged, with the
Colab branch taken; everything is real except what only Google and the
internet provide (see _colab_rehearsal.py):

- `google.colab` is a stand-in on the kernel's path: `drive.mount` logs the
  call; the "Drive" is a temporary folder holding a copy of the repo, which
  the notebook finds through CAPTIONING_DRIVE_PATH (in Colab: the
  GOOGLE_DRIVE_PATH the student sets). The kernel starts in an empty folder,
  like Colab's /content, so `helper` and the module can only come from there.
- `pip install pycocoevalcap` runs, against a stand-in `pip` that cannot
  download: it succeeds because the package is installed here, as on a
  second run in Colab, and fails for anything missing.
- coco.pt: a small file of the real format served from 127.0.0.1, found
  through CAPTIONING_COCO_URL, with CAPTIONING_COCO_EXPECTED giving its
  counts and size (the real file's are the defaults). The server cuts the
  first response, so the notebook's own download code must resume it
  (Range request), verify it and rename it into place.
- ImageNet weights: a state dict of RegNetX-400MF's keys and shapes (seeded
  values, not ImageNet's) in $TORCH_HOME/hub/checkpoints under torchvision's
  file name. `pretrained=True` then loads it through torchvision's own code
  (`Weights.get_state_dict(check_hash=True)`, i.e. torch.hub's
  load_state_dict_from_url): the cached file is used as is, since torch.hub
  checks the hash prefix only while downloading. What this stands in for is
  that download and its hash check, which need the network.
- The training cells run briefly through CAPTIONING_TRAIN_OPTIONS (by
  default empty: the full runs), with the encoder training as on Colab's GPU.

A broken Colab path (a wrong key or dtype in the data, a URL not used, a cell
that works offline only) fails one of these tests.
"""
import json
import os
from pathlib import Path

import nbformat
import pytest

from _colab_rehearsal import (
    cell_text,
    coco_bytes,
    coco_expectation,
    copy_repo_to_drive,
    make_coco,
    read_log,
    run_notebook,
    write_imagenet_standin,
    write_standins,
)
from _range_server import CocoServer

# The slow tier (make test-all): the notebook's Colab branch, run from first cell to last.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
NOTEBOOK = REPO / "rnn_lstm_captioning.ipynb"
# Short training runs with the encoder training too, as the GPU defaults on Colab do.
TRAIN_OPTIONS = "--epochs 2 --batch-size 16 --no-freeze-encoder --minutes 0 --eval-batch-size 16 --samples 2 --no-progress"


def stage(tmp_path: Path, payload: bytes, expected: dict) -> dict:
    """
    Everything but the server: stand-ins, Drive copy, weights; the kernel's
    environment. Returns a dict of the paths and the env.
    """
    drive = copy_repo_to_drive(REPO, tmp_path / "drive" / "MyDrive" / "rnn_lstm_captioning")
    content = tmp_path / "content"
    content.mkdir()
    standins = write_standins(tmp_path / "standins")
    weights = write_imagenet_standin(tmp_path / "torch")
    log = tmp_path / "rehearsal.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPTIONING_", "PYTHON"))}
    env.update({
        "PYTHONPATH": str(standins),  # the stand-ins only: not the repo
        "TORCH_HOME": str(tmp_path / "torch"),
        "CAPTIONING_REHEARSAL_LOG": str(log),
        "CAPTIONING_DRIVE_PATH": str(drive),
        "CAPTIONING_COCO_EXPECTED": json.dumps(expected),
        "CAPTIONING_TRAIN_OPTIONS": TRAIN_OPTIONS,
        "MPLBACKEND": "agg",
    })
    return {"drive": drive, "content": content, "weights": weights, "log": log, "env": env}


def code_cell(notebook, start: str):
    """The first code cell whose source starts with start (after an optional # NBVAL_SKIP line)."""
    for cell in notebook.cells:
        source = cell.source.removeprefix("# NBVAL_SKIP\n")
        if cell.cell_type == "code" and source.startswith(start):
            return cell
    raise AssertionError(f"no code cell starting {start!r}")


def test_the_colab_branch_runs_from_first_cell_to_last(tmp_path):
    data = make_coco()
    payload = coco_bytes(data, tmp_path)
    cut = len(payload) // 3
    setup = stage(tmp_path, payload, coco_expectation(data, len(payload)))
    with CocoServer(payload, cut_after=cut) as server:
        setup["env"]["CAPTIONING_COCO_URL"] = server.url
        executed, probe = run_notebook(NOTEBOOK, setup["content"], setup["env"])
    drive = setup["drive"]

    # Colab: Drive mounted where Colab mounts it, the module and helper imported from the Drive folder.
    calls = read_log(setup["log"])
    assert calls[0] == {"call": "drive.mount", "mountpoint": "/content/drive"}
    assert calls[1] == {"call": "pip", "args": ["install", "--quiet", "pycocoevalcap"]}
    assert len(calls) == 2
    assert probe["in_colab"] is True and probe["drive_path"] == str(drive) and probe["cwd"] == str(drive)
    assert Path(probe["helper"]).parent == drive / "helper"
    assert Path(probe["module"]) == drive / "rnn_lstm_captioning.py"

    # coco.pt: fetched from the server, cut, resumed from where it broke, verified and renamed into place.
    assert server.requests == [("/coco.pt", None), ("/coco.pt", f"bytes={cut}-")]
    assert (drive / "datasets" / "coco.pt").read_bytes() == payload
    assert sorted(p.name for p in (drive / "datasets").iterdir()) == ["coco.pt"]  # no .part, no temporary file
    data_cell = code_cell(executed, 'DATASET = "coco" if IN_COLAB')
    printed = cell_text(data_cell)
    assert "attempt 1: Could not download" in printed and "coco.pt.part" in printed  # the error, the progress bar
    lines = {" ".join(line.split()) for line in cell_text(data_cell, streams=["stdout"]).splitlines()}
    assert "train_images (64, 3, 112, 112) torch.uint8" in lines
    assert "train_captions (64, 17) torch.int64" in lines
    assert "train_image_ids (64,) torch.int64" in lines  # the real file has no ids: made from the pixels
    assert "first words: ['<NULL>', '<START>', '<END>', '<UNK>', 'a'" in printed
    assert probe["dataset"] == "coco" and probe["train_images"] == [64, 3, 112, 112]

    # ImageNet weights: the encoder of the notebook holds the cached file's values.
    assert probe["pretrained"] is True and probe["encoder_has_file_weights"] is True

    # The training and evaluation cells: three runs from the pretrained encoder, scored, sampled.
    assert probe["trained"] == ["attn", "lstm", "rnn"]
    for cell_type in ("rnn", "lstm", "attn"):
        run = drive / "runs" / "notebook" / cell_type
        assert {"best.pt", "last.pt", "metrics.json", "samples.png"} <= {p.name for p in run.iterdir()}
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["epochs_done"] == 2 and metrics["config"]["encoder"] == "imagenet"
        assert metrics["config"]["freeze_encoder"] is False and metrics["config"]["data"] == "coco"
    # Section 7 on Colab: the same attention LSTM on a random encoder and on ImageNet's, both frozen.
    for encoder in ("random", "imagenet"):
        config = json.loads((drive / "runs" / "notebook" / f"transfer-{encoder}" / "metrics.json").read_text())["config"]
        assert config["encoder"] == encoder and config["freeze_encoder"] is True and config["cell"] == "attn"
    evaluation = cell_text(code_cell(executed, "for cell_type, model in trained.items()"))
    for cell_type in ("rnn ", "lstm", "attn"):
        for beam in (1, 3):
            assert f"{cell_type} beam {beam}: bleu1 " in evaluation
    last = code_cell(executed, 'model = trained["attn"].eval()')
    assert any("image/" in key for output in last.outputs for key in output.get("data", {}))  # the figure


def test_the_colab_cell_mounts_where_the_default_drive_path_lies():
    """The rehearsal overrides GOOGLE_DRIVE_PATH; its default must lie in the Drive that the cell mounts."""
    colab = code_cell(nbformat.read(NOTEBOOK, as_version=4), "# On Colab:")
    assert 'drive.mount("/content/drive")' in colab.source
    assert 'os.environ.get("CAPTIONING_DRIVE_PATH", "/content/drive/MyDrive/' in colab.source


@pytest.mark.parametrize(
    "break_file, message",
    [
        (lambda data: data.update(train_captions=data["train_captions"].int()),
         "train_captions must have dtype torch.int64; got torch.int32"),
        (lambda data: data.update(train_caption=data.pop("train_captions")), "missing keys \\['train_captions'\\]"),
        (lambda data: data["vocab"]["idx_to_token"].reverse(), "the vocabulary must start with"),
    ],
    ids=["int32-captions", "renamed-key", "vocabulary-order"],
)
def test_a_bad_coco_file_stops_the_notebook_with_a_clear_error(tmp_path, break_file, message):
    from nbclient.exceptions import CellExecutionError

    data = make_coco()
    expected = coco_expectation(data, len(coco_bytes(data, tmp_path)))
    break_file(data)
    payload = coco_bytes(data, tmp_path)
    setup = stage(tmp_path, payload, expected)
    with CocoServer(payload) as server:
        setup["env"]["CAPTIONING_COCO_URL"] = server.url
        with pytest.raises(CellExecutionError, match=message) as failure:
            run_notebook(NOTEBOOK, setup["content"], setup["env"])
    assert "is not a valid coco.pt and was deleted" in str(failure.value)
    assert server.requests == [("/coco.pt", None)]
    assert list((setup["drive"] / "datasets").iterdir()) == []  # nothing half-made is left to load later
