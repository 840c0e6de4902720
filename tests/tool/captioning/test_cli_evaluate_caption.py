"""
`python -m helper.evaluate` and `python -m helper.caption`, on checkpoints of
small untrained models (training is tested in test_cli_train.py).
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _cli_data import tiny_checkpoint, write_tiny_data
from _impl_process import impl_process
from helper.captioning import caption as caption_cli
from helper.captioning import evaluate as evaluate_cli


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data") / "tiny.pt")


@pytest.fixture(scope="module")
def checkpoints(impl, data_path, tmp_path_factory):
    """Checkpoints of an attention model and an LSTM whose runs name data_path."""
    folder = tmp_path_factory.mktemp("checkpoints")
    return {cell: tiny_checkpoint(impl, folder / f"{cell}.pt", cell, data_path) for cell in ("attn", "lstm")}


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Images of other sizes, modes and formats than the training images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = [folder / "wide.png", folder / "grey.jpg", folder / "small.bmp"]
    Image.fromarray(rng.integers(0, 256, (60, 200, 4), dtype=np.uint8), "RGBA").save(paths[0])
    Image.fromarray(rng.integers(0, 256, (300, 90), dtype=np.uint8), "L").save(paths[1])
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), "RGB").save(paths[2])
    return paths


def _error(capsys):
    # A line of its own: the module may print on stderr too (the standard encoder prints as it is built).
    err = capsys.readouterr().err
    assert any(line.startswith("error: ") for line in err.splitlines()) and "Traceback" not in err
    return err


def test_evaluate_prints_and_writes_metrics_next_to_the_checkpoint(checkpoints, capsys):
    assert evaluate_cli.main([str(checkpoints["attn"])]) == 0
    printed = capsys.readouterr().out
    written = checkpoints["attn"].with_name("attn-val-beam1.json")
    report = json.loads(written.read_text())
    assert set(report["metrics"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact", "grounding"}
    assert report["images"] == 4 and report["beam_size"] == 1 and len(report["predictions"]) == 4
    assert "cider" in printed and str(written) in printed


def test_evaluate_with_beam_search_on_a_chosen_split_and_output(checkpoints, data_path, tmp_path):
    out = tmp_path / "report.json"
    argv = [str(checkpoints["lstm"]), "--beam-size", "2", "--split", "train", "--data", str(data_path),
            "--max-images", "5", "--out", str(out)]
    assert evaluate_cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "train" and report["beam_size"] == 2 and report["images"] == 5
    assert "grounding" not in report["metrics"]  # an LSTM has no attention


def test_evaluate_missing_checkpoint_is_an_error(tmp_path, capsys):
    assert evaluate_cli.main([str(tmp_path / "missing.pt")]) == 1
    assert "missing.pt" in _error(capsys)


def test_evaluate_foreign_checkpoint_is_an_error(tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("hello")
    assert evaluate_cli.main([str(foreign)]) == 1
    assert "not a checkpoint" in _error(capsys)


def test_caption_reads_images_of_any_size_mode_and_format(checkpoints, image_files, capsys):
    assert caption_cli.main([str(checkpoints["lstm"]), *map(str, image_files)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in image_files]


def test_caption_with_beam_search_draws_attention_maps(checkpoints, image_files, tmp_path):
    picture = tmp_path / "attention.png"
    argv = [str(checkpoints["attn"]), str(image_files[0]), "--beam-size", "3", "--attention-map", str(picture)]
    assert caption_cli.main(argv) == 0
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_caption_files_returns_the_images_as_the_model_saw_them(checkpoints, image_files):
    captions, images, attn_weights = caption_cli.caption_files(checkpoints["attn"], image_files[:2], max_length=5)
    assert len(captions) == 2 and tuple(images.shape) == (2, 3, 112, 112)
    assert tuple(attn_weights.shape) == (2, 5, 4, 4)


def test_attention_map_of_a_model_without_attention_is_an_error(checkpoints, image_files, tmp_path, capsys):
    argv = [str(checkpoints["lstm"]), str(image_files[0]), "--attention-map", str(tmp_path / "a.png")]
    assert caption_cli.main(argv) == 1
    assert "attention model" in _error(capsys)


def test_file_that_is_not_an_image_is_an_error_naming_it(checkpoints, image_files, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    assert caption_cli.main([str(checkpoints["lstm"]), str(image_files[0]), str(text)]) == 1
    assert "notes.png is not an image" in _error(capsys)


def test_caption_command_reports_bad_input_without_a_traceback(impl, checkpoints, tmp_path):
    # The one end-to-end run of a real `python -m` process.
    env, cwd = impl_process(impl, tmp_path / "impl")
    completed = subprocess.run(
        [sys.executable, "-m", "helper.caption", str(checkpoints["lstm"]), str(tmp_path / "missing.jpg")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 1
    assert any(line.startswith("error: ") and "missing.jpg" in line for line in completed.stderr.splitlines())
    assert "Traceback" not in completed.stderr
