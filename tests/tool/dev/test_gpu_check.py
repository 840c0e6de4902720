"""
`python -m helper.gpu_check --device cpu`: the GPU check's dry run, the same
steps at a tiny size on the CPU, so that the script works on the day a GPU
is available. Its report must say that its figures were measured on the CPU.
"""
import json

import pytest

from helper.dev import gpu_check

# The slow tier (make test-all): a dry run of the GPU check runs the tests and the notebook again.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run for the tests of this file (about a minute on 2 cores); its data in a temporary folder."""
    out = tmp_path_factory.mktemp("gpu-check")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTIONING_DATA_DIR", str(out / "datasets"))  # tiny "shapes", not the repo's cache
        code = gpu_check.main(["--device", "cpu", "--out", str(out)])
    return code, out


def test_the_dry_run_writes_both_reports(dry_run):
    code, out = dry_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["measured_on"] == "cpu" and report["size"] == "tiny"
    assert report["machine"]["gpu"] is None and report["machine"]["torch"]
    assert set(report["steps_seconds"]) == {"api", "grading", "notebook", "training", "bench"}
    assert 0 < report["total_seconds"] < 600  # about a minute on 2 idle cores; a full size would take an hour
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["report.json", "report.md"]  # no temporary file


def test_every_api_piece_is_compared_in_both_dtypes(dry_run):
    report = json.loads((dry_run[1] / "report.json").read_text())
    rows = report["api"]
    pieces = {r["piece"] for r in rows}
    for name in ("rnn_step_backward", "rnn_backward", "temporal_softmax_loss", "dot_product_attention",
                 "AttentionLSTM.forward", "ImageEncoder (eval)", "CaptioningRNN attn: loss and gradients",
                 "CaptioningRNN attn: greedy sample"):
        assert name in pieces
    assert {(r["piece"], r["dtype"]) for r in rows} == {(p, d) for p in pieces for d in ("float32", "float64")}
    # CPU against CPU: the same arithmetic, so no difference at all; a GPU run reports its own.
    assert all(r["ok"] and r["difference"] == 0.0 for r in rows)


def test_the_tests_the_notebook_and_the_training_ran(dry_run):
    report = json.loads((dry_run[1] / "report.json").read_text())
    grading = report["grading"]
    assert grading["returncode"] == 0 and grading["passed"] >= 1 and grading["failed"] == 0
    assert grading["filter"] == "images_device"
    notebook = report["notebook"]
    assert notebook["executed"] is False and notebook["returncode"] == 0 and "--collect-only" in notebook["command"]
    assert notebook["collected"] > 30  # one item per code cell
    training = {r["cell"]: r for r in report["training"]}
    assert sorted(training) == ["attn", "lstm", "rnn"]
    for row in training.values():
        assert row["epochs"] == 1 and row["images_per_second"] > 0 and row["peak_memory_mb"] > 0
        assert 0 <= row["bleu4"] <= 1 and row["cider"] >= 0 and 0 <= row["exact"] <= 1
        assert "--no-freeze-encoder" in row["command"]  # the GPU defaults: the encoder trains too
    for row in report["bench"]:
        assert row["plain_images_per_second"] > 0 and row["ours_images_per_second"] > 0
        assert row["beam1_captions_per_second"] > 0 and row["beam3_captions_per_second"] > 0


def test_the_markdown_says_the_figures_are_cpu_figures(dry_run):
    text = (dry_run[1] / "report.md").read_text()
    assert "**Measured on the CPU**" in text and "none of these figures is a GPU figure" in text
    for heading in ("## The API on cpu against the CPU", "## The grading tests", "## The notebook under nbval",
                    "## Training with the GPU defaults, on cpu", "## Training benchmark and decoding, on cpu"):
        assert heading in text
    assert "Not run at this size" in text and "| attn | 1 |" in text


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the error is for machines without one")
    assert gpu_check.main(["--device", "cuda", "--out", str(tmp_path)]) != 0
    assert "no CUDA device here; --device cpu runs the tiny dry run" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
