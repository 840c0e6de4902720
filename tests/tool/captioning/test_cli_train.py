"""
`python -m helper.train`: outputs, resuming exactly after an interruption,
cached encoder features, and clear errors for bad input. Runs are tiny
(16 training images, 4 validation images, H = 16) and in float32.
"""
import json
import shutil
import signal

import pytest
import torch
from _cli_data import TINY, write_tiny_data

import helper.captioning.frozen_encoder
import helper.captioning.training
from helper.captioning import run as train_cli
from helper.captioning.checkpoint import load_checkpoint, new_model, save_checkpoint
from helper.captioning.config import RunConfig, build_parser
from helper.captioning.evaluate import evaluate_checkpoint
from helper.captioning.features import FeatureLookup, encode_images, index_images, swap_image_encoder
from helper.captioning.outputs import check_output_dir
from helper.captioning.parts import model_parts
from helper.captioning.processes import GracefulStop
from helper.common.utils import reset_seed


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data") / "tiny.pt")


@pytest.fixture(scope="module")
def attn_run(impl, data_path, tmp_path_factory):
    """One finished run (attn, 1 epoch), shared read-only by several tests."""
    out = tmp_path_factory.mktemp("runs") / "attn"
    run = ["--cell", "attn", "--epochs", "1", "--train-images", "8"]
    code = train_cli.main(["--data", str(data_path), "--out", str(out), *TINY, *run, "--batch-size", "4"])
    assert code == 0
    return out


def args(data_path, out, *extra):
    return ["--data", str(data_path), "--out", str(out), *TINY, *extra]


def test_train_writes_checkpoints_metrics_and_samples(attn_run):
    assert {p.name for p in attn_run.iterdir()} == {"best.pt", "last.pt", "metrics.json", "samples.png"}
    metrics = json.loads((attn_run / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact", "grounding"}
    assert metrics["best_epoch"] == 1 and metrics["epochs_done"] == 1
    assert metrics["timing"]["train_seconds"] > 0 and metrics["timing"]["images_per_second"] > 0
    assert metrics["config"]["cell"] == "attn" and metrics["config"]["hidden_dim"] == 16
    last = load_checkpoint(attn_run / "last.pt")
    assert last["epoch"] == 1 and last["step"] == 0
    assert {"model", "optimizer", "scheduler", "vocab", "config", "rng", "model_config"} <= set(last)
    assert (attn_run / "samples.png").read_bytes()[:4] == b"\x89PNG"


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.fixture
def terminal_ctrl_c():
    """
    SIGINT as a terminal's Ctrl-C finds it: Python's default handler. A shell
    starts background jobs with SIGINT ignored, and the trainer then leaves it
    ignored, as it should (tested below); the Ctrl-C tests must hold whatever
    started pytest.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow  # trains
@pytest.mark.parametrize("encoder", ["--no-freeze-encoder", "--freeze-encoder"])
def test_interrupted_run_resumes_exactly_where_it_stopped(impl, data_path, tmp_path, monkeypatch, capsys, terminal_ctrl_c,
                                                          encoder):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run = ["--cell", "lstm", "--epochs", "2", "--train-images", "8", "--batch-size", "4", encoder]
    assert train_cli.main(args(data_path, reference, *run)) == 0

    # Ctrl-C during the third of four steps (epoch 2, step 1): the step finishes, last.pt is saved mid-epoch.
    real_step, calls = helper.captioning.training.train_step, []

    def step_then_ctrl_c(*a, **k):
        calls.append(1)
        loss = real_step(*a, **k)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(helper.captioning.training, "train_step", step_then_ctrl_c)
    assert train_cli.main(args(data_path, interrupted, *run)) == 130
    assert "--resume" in capsys.readouterr().err
    saved = load_checkpoint(interrupted / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 1)
    monkeypatch.undo()

    # Resuming needs no options but --out: the run's own come from its checkpoint.
    assert train_cli.main(["--out", str(interrupted), "--resume", "--no-progress"]) == 0
    expected, got = _weights(reference / "last.pt"), _weights(interrupted / "last.pt")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    losses = [load_checkpoint(p / "last.pt")["losses"] for p in (reference, interrupted)]
    assert losses[0] == losses[1]

    # A finished run trains on when given more epochs.
    assert train_cli.main(["--out", str(interrupted), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert json.loads((interrupted / "metrics.json").read_text())["epochs_done"] == 3


def test_resuming_a_finished_run_loads_no_data_and_leaves_its_outputs_as_they_are(
    attn_run, tmp_path, monkeypatch, capsys
):
    out = shutil.copytree(attn_run, tmp_path / "attn")
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def no_loading(*a, **k):
        raise AssertionError("a finished run has nothing to train: no data to load, no features to encode")

    monkeypatch.setattr(train_cli, "load_dataset", no_loading)
    assert train_cli.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert "has done 1 epochs; pass --epochs N" in capsys.readouterr().out
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_resuming_a_finished_run_stopped_before_its_final_outputs_writes_them(attn_run, tmp_path):
    out = shutil.copytree(attn_run, tmp_path / "attn")
    (out / "samples.png").unlink()
    assert train_cli.main(["--out", str(out), "--resume", "--no-progress"]) == 0
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_first_ctrl_c_asks_to_stop_the_second_stops_at_once_and_the_handlers_come_back(terminal_ctrl_c):
    before = {sig: signal.getsignal(sig) for sig in GracefulStop.SIGNALS}
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in GracefulStop.SIGNALS} == before


def test_ctrl_c_stays_ignored_where_the_shell_ignores_it_and_sigterm_still_asks_to_stop():
    # A shell starts background jobs with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with GracefulStop() as stop:
            signal.raise_signal(signal.SIGINT)
            assert not stop.requested
            assert signal.getsignal(signal.SIGTERM) == stop._handle  # else SIGTERM would end pytest
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow  # trains
def test_frozen_run_resumes_from_a_checkpoint_without_its_standardised_projection(impl, data_path, tmp_path):
    # Checkpoints written before frozen runs standardised their features hold only the projection for raw
    # features (as the model weights of every checkpoint do); resuming goes on from the same model.
    reference, old = tmp_path / "reference", tmp_path / "old"
    run = ["--cell", "lstm", "--train-images", "8", "--batch-size", "4", "--freeze-encoder", "--samples", "1"]
    assert train_cli.main(args(data_path, reference, *run, "--epochs", "2")) == 0
    assert train_cli.main(args(data_path, old, *run, "--epochs", "1")) == 0
    checkpoint = load_checkpoint(old / "last.pt")
    del checkpoint["standardised_projection"]
    save_checkpoint(old / "last.pt", {k: v for k, v in checkpoint.items() if k not in ("format", "format_version")})

    assert train_cli.main(["--out", str(old), "--resume", "--epochs", "2", "--no-progress"]) == 0
    expected, got = _weights(reference / "last.pt"), _weights(old / "last.pt")
    for name in expected:  # equal up to the rounding of folding and unfolding
        assert torch.allclose(expected[name], got[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.slow  # trains
def test_every_cell_type_trains_the_decoder_alone_with_a_frozen_encoder(impl, data_path, tmp_path):
    out = tmp_path / "rnn"
    assert train_cli.main(args(data_path, out, "--cell", "rnn", "--epochs", "1", "--freeze-encoder")) == 0
    config = RunConfig(**load_checkpoint(out / "last.pt")["config"])
    reset_seed(config.seed)
    model = new_model(config.model_config(), torch.load(data_path)["vocab"]["token_to_idx"])
    initial = model.state_dict()
    trained = _weights(out / "last.pt")
    assert set(trained) == set(initial)  # the encoder is saved too
    # The encoder's attribute is the module's own choice: found by type.
    prefix = next(name for name, child in model.named_children() if child is model_parts(model).encoder) + "."
    encoder_keys = [k for k in initial if k.startswith(prefix)]
    assert encoder_keys and all(torch.equal(trained[k], initial[k]) for k in encoder_keys)
    decoder_keys = [k for k in initial if not k.startswith(prefix)]
    assert any(not torch.equal(trained[k], initial[k]) for k in decoder_keys)


@pytest.mark.slow  # trains
@pytest.mark.parametrize("cell", ["rnn", "attn"])
def test_checkpoint_of_a_decoder_trained_on_standardised_features_captions_real_images_alike(
    impl, data_path, tmp_path, cell
):
    # The decoder trains on standardised cached features; its checkpoint must work on raw images.
    out = tmp_path / cell
    run = ["--cell", cell, "--epochs", "2", "--freeze-encoder", "--lr", "0.01", "--samples", "1"]
    assert train_cli.main(args(data_path, out, *run)) == 0
    during_training = json.loads((out / "metrics.json").read_text())["history"][-1]
    from_checkpoint = evaluate_checkpoint(out / "last.pt")
    for name in ("bleu1", "bleu4", "cider", "exact"):
        assert from_checkpoint["metrics"][name] == pytest.approx(during_training[name], abs=1e-6), name
    assert load_checkpoint(out / "last.pt")["standardised_projection"] is not None


def test_cached_features_give_the_loss_and_captions_of_the_encoder(impl):
    from _cli_data import tiny_data

    data = tiny_data(num_train=4)
    torch.manual_seed(0)
    model = impl.CaptioningRNN(data["vocab"]["token_to_idx"], input_dim=400, wordvec_dim=8, hidden_dim=16,
                               cell_type="attn", image_encoder_pretrained=False, ignore_index=0).eval()
    images, captions = data["train_images"], data["train_captions"]
    features = encode_images(model_parts(model).encoder, images, batch_size=3)
    expected_loss, (expected_words, expected_attn) = model(images, captions), model.sample(images)
    _, encoder = swap_image_encoder(model, FeatureLookup(features))
    stand_ins = index_images(torch.arange(4))
    loss, (words, attn) = model(stand_ins, captions), model.sample(stand_ins)
    assert torch.allclose(loss, expected_loss, rtol=1e-5)
    assert torch.equal(words, expected_words) and torch.allclose(attn, expected_attn, atol=1e-6)
    _, lookup = swap_image_encoder(model, encoder)  # and back
    assert isinstance(lookup, FeatureLookup) and model_parts(model).encoder is encoder


@pytest.mark.slow  # trains
def test_feature_cache_file_is_reused_by_the_next_run(impl, data_path, tmp_path, monkeypatch):
    cache = tmp_path / "features.pt"
    run = ["--cell", "rnn", "--epochs", "1", "--freeze-encoder", "--feature-cache", str(cache), "--samples", "1"]
    assert train_cli.main(args(data_path, tmp_path / "first", *run)) == 0
    assert cache.is_file()

    def no_encoding(*a, **k):
        raise AssertionError("the features should come from the cache file")

    monkeypatch.setattr(helper.captioning.frozen_encoder, "encode_images", no_encoding)
    assert train_cli.main(args(data_path, tmp_path / "second", *run)) == 0


@pytest.mark.slow  # trains
def test_time_budget_ends_the_run_before_an_epoch_that_would_not_fit(impl, data_path, tmp_path):
    out = tmp_path / "budget"
    run = ["--cell", "rnn", "--epochs", "3", "--minutes", "0.0001", "--freeze-encoder", "--samples", "1"]
    assert train_cli.main(args(data_path, out, *run)) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_done"] == 1


def _error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_folder_holding_a_run_is_refused_without_resume_or_force(attn_run, data_path, capsys):
    assert train_cli.main(args(data_path, attn_run, "--cell", "attn")) == 1
    assert "already holds a run" in _error(capsys)


def test_resume_refuses_options_that_change_the_run(attn_run, data_path, capsys):
    assert train_cli.main(["--out", str(attn_run), "--resume", "--hidden-dim", "32"]) == 1
    assert "hidden_dim" in _error(capsys)


def test_force_starts_anew_in_a_folder_holding_a_run(attn_run):
    assert check_output_dir(attn_run, resume=False, force=True) is None


def test_folder_with_other_files_is_refused(data_path, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert train_cli.main(args(data_path, tmp_path, "--cell", "rnn")) == 1
    assert "notes.txt" in _error(capsys)


def test_resume_without_a_run_is_an_error(data_path, tmp_path, capsys):
    assert train_cli.main(args(data_path, tmp_path / "empty", "--resume")) == 1
    assert "nothing to resume" in _error(capsys)


def test_resume_from_a_foreign_last_checkpoint_is_an_error(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"something else")
    assert train_cli.main(["--out", str(tmp_path), "--resume"]) == 1
    assert "not a checkpoint" in _error(capsys)


def test_new_run_without_cell_is_an_error(data_path, tmp_path, capsys):
    assert train_cli.main(args(data_path, tmp_path / "run")) == 1
    assert "--cell is required" in _error(capsys)


def test_missing_data_file_is_an_error(tmp_path, capsys):
    assert train_cli.main(["--cell", "rnn", "--data", str(tmp_path / "none.pt"), "--out", str(tmp_path / "run")]) == 1
    assert "none.pt" in _error(capsys)


BAD_OPTIONS = [["--bogus"], ["--cell", "gru"], ["--epochs", "0"], ["--lr", "fast"], ["--resume", "--force"]]


@pytest.mark.parametrize("bad", BAD_OPTIONS)
def test_bad_options_are_rejected_by_argparse(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--out", str(tmp_path), *bad])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_loss_curves_of_a_run_can_be_plotted(attn_run, tmp_path):
    from helper.captioning.checkpoint import loss_history
    from helper.captioning.plotting import plot_loss_curves

    losses = loss_history(load_checkpoint(attn_run / "last.pt"))
    assert len(losses) == 2  # 8 images in minibatches of 4
    plot_loss_curves({"attn": losses}, smooth=2, path=tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_defaults_freeze_the_encoder_on_cpu_and_train_it_on_cuda(tmp_path):
    parse = build_parser().parse_args
    cpu = RunConfig.from_args(parse(["--cell", "attn", "--out", str(tmp_path)]), torch.device("cpu"))
    cuda = RunConfig.from_args(parse(["--cell", "attn", "--out", str(tmp_path)]), torch.device("cuda"))
    assert cpu.freeze_encoder is True and cuda.freeze_encoder is False
    assert (cpu.epochs, cuda.epochs) == (2, 30) and cpu.hidden_dim == cuda.hidden_dim == 256
    assert cpu.minutes is None and cuda.minutes is None  # fixed epochs: the same numbers on every machine
    given = RunConfig.from_args(parse(["--cell", "attn", "--out", str(tmp_path), "--no-freeze-encoder"]),
                                torch.device("cpu"))
    assert given.freeze_encoder is False


def test_resumed_configuration_takes_the_saved_one_and_refuses_changes_to_what_defines_the_run(tmp_path):
    parse = build_parser().parse_args
    new = RunConfig.from_args(parse(["--cell", "lstm", "--out", str(tmp_path), "--epochs", "2"]), torch.device("cpu"))
    saved = new.as_dict()
    assert RunConfig(**saved) == new
    longer = RunConfig.resumed(saved, parse(["--out", str(tmp_path), "--resume", "--epochs", "5"]))
    assert longer.epochs == 5 and longer.cell == "lstm"
    older = {k: v for k, v in saved.items() if k != "samples"}  # a run from before an option existed
    resumed = RunConfig.resumed(older, parse(["--out", str(tmp_path), "--resume"]))
    assert resumed.samples == RunConfig(cell="rnn").samples
    # The threads are part of the run's numbers: a new run records the process's, a resumed run keeps them.
    assert new.threads == torch.get_num_threads()
    other = RunConfig.resumed({**saved, "threads": new.threads + 1}, parse(["--out", str(tmp_path), "--resume"]))
    assert other.threads == new.threads + 1
    with pytest.raises(ValueError, match="--resume cannot change what defines the run .*lr_decay"):
        RunConfig.resumed(saved, parse(["--out", str(tmp_path), "--resume", "--lr-decay", "0.5"]))
    with pytest.raises(ValueError, match="--cell is required"):
        RunConfig.from_args(parse(["--out", str(tmp_path)]), torch.device("cpu"))
