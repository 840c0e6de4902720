"""
One seed gives one run: the same losses, weights and metrics every time on
a CPU, busy or idle, and a run killed outright (SIGKILL, no chance to save)
and resumed ends where an uninterrupted one does.

What used to break it: with several threads, the backward pass of the word
embedding's table lookup (W_embed[x]) adds a large batch's gradients into
the table's rows with atomic float additions, in whatever order the threads
get there, which a busy machine changes from run to run. The runs here are
large enough for that path (minibatch x words x wordvec_dim >= 32768, ATen's
grain for going parallel) and use two threads. The order of those additions
is a race, so a run without the fix differs from another only most of the
time, not always. The number of threads is part of a run (oneDNN and MKL
split their sums by thread); the runs below fix it with `threads` /
`--threads`, also where the process was started with another number.

Ctrl-C, which saves mid-epoch, is tested in test_cli_train.py
(test_interrupted_run_resumes_exactly_where_it_stopped).
"""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from _cli_data import tiny_data, write_tiny_data
from _impl_process import impl_process

from helper.captioning import run as train_cli
from helper.captioning.checkpoint import load_checkpoint
from helper.captioning.features import FeatureLookup, index_images, swap_image_encoder
from helper.captioning.training import train_captioner
from helper.common.utils import reset_seed
from helper.data.format import NULL

NUM_TRAIN, BATCH, WORDVEC = 64, 64, 64  # 64 x 16 words x 64 = 65536 gradient values into the table per step


def train_decoder(impl, threads):
    """
    An LSTM decoder trained by train_captioner on fixed random features
    (2 epochs of one minibatch of 64), in float32.

    Returns a tuple of:
    - the loss of every minibatch, floats
    - the trained state_dict
    """
    data = tiny_data(num_train=NUM_TRAIN)
    features = torch.randn(NUM_TRAIN, 400, 4, 4, generator=torch.Generator().manual_seed(1))
    reset_seed(0)
    model = impl.CaptioningRNN(data["vocab"]["token_to_idx"], input_dim=400, wordvec_dim=WORDVEC, hidden_dim=32,
                               cell_type="lstm", image_encoder_pretrained=False, ignore_index=NULL)
    swap_image_encoder(model, FeatureLookup(features))
    model, losses = train_captioner(
        model, index_images(torch.arange(NUM_TRAIN)), data["train_captions"], num_epochs=2, batch_size=BATCH,
        learning_rate=1e-2, fast=False, progress=False, threads=threads,
    )
    return losses, {name: value.clone() for name, value in model.state_dict().items()}


def assert_same_weights(expected, got):
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_train_captioner_twice_with_one_seed_and_two_threads_gives_the_same_losses_and_weights(impl):
    previous = torch.get_num_threads()
    first_losses, first_weights = train_decoder(impl, threads=2)
    torch.set_num_threads(1)  # the second run starts in a process set to one thread: threads=2 decides
    try:
        second_losses, second_weights = train_decoder(impl, threads=2)
        assert torch.get_num_threads() == 1  # and training leaves the process as it found it
    finally:
        torch.set_num_threads(previous)
    assert not torch.are_deterministic_algorithms_enabled()
    assert first_losses == second_losses
    assert_same_weights(first_weights, second_weights)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("data") / "tiny.pt", num_train=NUM_TRAIN)


def options(data_path, out):
    """The whole model trained with the fast defaults (bfloat16 autocast where the CPU has it), 2 threads."""
    return ["--cell", "lstm", "--data", str(data_path), "--out", str(out), "--no-freeze-encoder", "--epochs", "3",
            "--batch-size", "32", "--wordvec-dim", "128", "--hidden-dim", "16", "--seed", "3", "--threads", "2",
            "--minutes", "0", "--samples", "1", "--no-progress"]


def kill_during_second_epoch(command, cwd, env, out):
    """
    Start a training run, and SIGKILL it as soon as its first epoch's
    last.pt is written (the second epoch is then training).

    Returns:
    - the killed run's epoch count in last.pt
    """
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (out / "last.pt").exists():
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no last.pt after 300 s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    return load_checkpoint(out / "last.pt")["epoch"]


@pytest.mark.slow  # trains the whole model three times
def test_run_killed_mid_training_and_resumed_ends_with_the_metrics_and_weights_of_an_uninterrupted_one(
    impl, data_path, tmp_path
):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert train_cli.main(options(data_path, reference)) == 0

    # The killed run is another process, started with one thread (OMP_NUM_THREADS=1): --threads 2 decides.
    env, cwd = impl_process(impl, tmp_path / "impl")
    command = [sys.executable, "-m", "helper.train", *options(data_path, killed)]
    epochs_saved = kill_during_second_epoch(command, cwd, {**env, "OMP_NUM_THREADS": "1"}, killed)
    assert epochs_saved < 3

    # Resumed in this process, with no options but --out: the seed and the threads come from last.pt.
    assert train_cli.main(["--out", str(killed), "--resume", "--no-progress"]) == 0
    expected, got = (load_checkpoint(path / "last.pt") for path in (reference, killed))
    assert got["config"]["threads"] == expected["config"]["threads"] == 2
    assert_same_weights(expected["model"], got["model"])
    assert got["losses"] == expected["losses"]
    expected, got = (json.loads((path / "metrics.json").read_text()) for path in (reference, killed))
    assert len(got["history"]) == 3
    for before, after in zip(expected["history"], got["history"]):
        assert {k: v for k, v in before.items() if "seconds" not in k and "per_second" not in k} == {
            k: v for k, v in after.items() if "seconds" not in k and "per_second" not in k
        }
    assert got["metrics"] == expected["metrics"]
