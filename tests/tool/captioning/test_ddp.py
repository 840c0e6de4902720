"""
Distributed training: `torchrun --nproc_per_node=2 -m helper.train` on the
CPU (gloo) gives the weights of one process with the same global batch.

The run uses --freeze-encoder: with a training encoder, batch norm would
normalise each process's shard with its own statistics, which differ from
the global batch's (see helper/captioning/run.py). It runs in float32 without
autocast (--no-fast), and with a global batch of 7 that splits into
unequal shards (4 + 3, and 1 + 1 for the last one), so that the weighting of
each process's loss by its share is checked too.
"""
import subprocess
import sys
from pathlib import Path

from _cli_data import TINY, write_tiny_data
from _impl_process import impl_process

from helper.captioning import run as train_cli
from helper.captioning.checkpoint import load_checkpoint
import pytest

# The slow tier (make test-all): training under torchrun, two processes.
pytestmark = pytest.mark.slow


def test_the_workers_import_the_implementation_under_test(impl, tmp_path):
    env, cwd = impl_process(impl, tmp_path / "impl")
    completed = subprocess.run(
        [sys.executable, "-c", "import rnn_lstm_captioning; print(rnn_lstm_captioning.__file__)"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert Path(completed.stdout.strip()).resolve() == Path(impl.__file__).resolve()


def test_two_processes_train_like_one_with_the_same_global_batch(impl, tmp_path):
    data = write_tiny_data(tmp_path / "tiny.pt")
    options = [*TINY, "--batch-size", "7", "--cell", "attn", "--epochs", "2", "--freeze-encoder", "--data", str(data)]

    distributed = tmp_path / "distributed"
    env, cwd = impl_process(impl, tmp_path / "impl")
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "helper.train", *options, "--out", str(distributed)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "x2 processes" in completed.stdout

    single = tmp_path / "single"
    assert train_cli.main([*options, "--out", str(single)]) == 0

    expected, got = (load_checkpoint(p / "last.pt") for p in (single, distributed))
    assert expected["epoch"] == got["epoch"] == 2
    for name, value in expected["model"].items():
        # Relative to each tensor's scale: the processes sum in another order (one thread each), and
        # folding the feature standardisation into the projection scales those roundings up by as
        # much as the inverse of the smallest feature deviation.
        error = (got["model"][name].double() - value.double()).abs().max().item() if value.numel() else 0.0
        assert error <= 1e-4 * value.double().abs().max().item() + 1e-6, (name, error)
    # Rank 0 alone wrote the outputs, once.
    assert {p.name for p in distributed.iterdir()} == {"best.pt", "last.pt", "metrics.json", "samples.png"}
