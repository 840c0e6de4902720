"""
Distributed training: `torchrun --nproc_per_node=2 -m helper.train` on the
CPU (gloo) gives the weights of one process with the same global batch.

The run uses --freeze-encoder: with a training encoder, batch norm would
normalise each process's shard with its own statistics, which differ from
the global batch's (see helper/train.py). It runs in float32 without
autocast (--no-fast), and with a global batch of 7 that splits into
unequal shards (4 + 3, and 1 + 1 for the last one), so that the weighting of
each process's loss by its share is checked too.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

from _cli_data import TINY, write_tiny_data
from helper import train as train_cli
from helper.checkpoint import load_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent


def _environment(impl, folder: Path) -> dict:
    """The environment of the workers: the implementation under test importable as rnn_lstm_captioning."""
    link_folder = folder / "impl"
    link_folder.mkdir()
    (link_folder / "rnn_lstm_captioning.py").symlink_to(Path(impl.__file__).resolve())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(link_folder), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # two processes on the machine's cores
    return env


def test_two_processes_train_like_one_with_the_same_global_batch(impl, tmp_path):
    data = write_tiny_data(tmp_path / "tiny.pt")
    options = [*TINY, "--batch-size", "7", "--cell", "attn", "--epochs", "2", "--freeze-encoder", "--data", str(data)]

    distributed = tmp_path / "distributed"
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "helper.train", *options, "--out", str(distributed)],
        cwd=REPO_ROOT, env=_environment(impl, tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "x2 processes" in completed.stdout

    single = tmp_path / "single"
    assert train_cli.main([*options, "--out", str(single)]) == 0

    expected, got = (load_checkpoint(p / "last.pt") for p in (single, distributed))
    assert expected["epoch"] == got["epoch"] == 2
    for name, value in expected["model"].items():
        assert torch.allclose(got["model"][name], value, rtol=1e-4, atol=1e-6), name
    # Rank 0 alone wrote the outputs, once.
    assert {p.name for p in distributed.iterdir()} == {"best.pt", "last.pt", "metrics.json", "samples.png"}
