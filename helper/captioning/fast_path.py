"""
What the fast training loop uses on this machine, chosen by measuring it.

bfloat16 autocast, the channels_last memory format and the fused AdamW
update make training faster on some CPUs and not on others (the README's
Performance section has the figures: together about 1.8x the plain float32
loop on a CPU with AVX-512 and bfloat16 kernels, channels_last and fused
AdamW alone about 1.1x with AVX2 kernels). So on a CPU the fast loop does not
go by the CPU's flags alone: the first fast run of a workload on a machine
times a few training steps of each candidate (`candidates`) beside the plain
loop, in alternating rounds, on a copy of its own model, and keeps the
fastest: the plain loop unless a candidate is at least MARGIN faster. The
choice is cached per machine (CPU, instruction sets and kernel limits,
threads, torch version) and workload (the model's sizes, whether the
encoder trains, the minibatch) in fast-paths.json in the cache folder
($CAPTIONING_CACHE_DIR, else ~/.cache/captioning), so that every later run
takes the same path whatever the machine's load at the time: one seed on
one machine gives one run. helper.train records its run's path in the
checkpoints and a resumed run keeps it.

On CUDA the path is the rule, unmeasured: mixed precision, channels_last,
cuDNN autotuning and fused AdamW.
"""
import copy
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from helper.captioning.steps import autocast_dtype, make_optimizer, train_step
from helper.common.files import atomic_output
from helper.dev.machine import machine_description

MARGIN = 1.03  # how much faster than the plain loop a candidate must be to be chosen
ROUNDS, STEPS = 3, 2  # alternating rounds, and steps per candidate and round


@dataclass(frozen=True)
class FastPath:
    """The speed-ups a training loop uses (all off: the plain float32 loop)."""

    amp: Optional[str] = None  # autocast dtype: "bfloat16", "float16" or None
    channels_last: bool = False
    fused: bool = False

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return getattr(torch, self.amp) if self.amp else None

    def describe(self) -> str:
        """e.g. "bfloat16 autocast, channels_last, fused AdamW", or "plain float32"."""
        parts = [f"{self.amp} autocast"] if self.amp else []
        parts += ["channels_last"] if self.channels_last else []
        parts += ["fused AdamW"] if self.fused else []
        return ", ".join(parts) or "plain float32"


PLAIN = FastPath()


def candidates(device: torch.device) -> List[FastPath]:
    """The paths worth timing on a CPU: the plain loop, channels_last with fused AdamW, and bfloat16 on top where it has kernels."""
    paths = [PLAIN, FastPath(channels_last=True, fused=True)]
    if autocast_dtype(device) is not None:
        paths.append(FastPath("bfloat16", channels_last=True, fused=True))
    return paths


def rule_path(device: torch.device) -> FastPath:
    """Every speed-up the device has kernels for: the path on CUDA, and the CPU's before paths were measured."""
    amp = autocast_dtype(device)
    return FastPath(str(amp).removeprefix("torch.") if amp is not None else None, channels_last=True, fused=True)


def time_paths(model: nn.Module, images: torch.Tensor, captions: torch.Tensor, paths: List[FastPath]) -> Dict[FastPath, float]:
    """
    Seconds per training step of each path, on a copy of the model (the
    model itself is left as it is), the median of ROUNDS alternating rounds
    of STEPS steps after one step of warm-up each.

    Inputs:
    - model: the captioning model as it will train (frozen parts with
      requires_grad False), on the CPU
    - images, captions: one minibatch of the run
    - paths: the candidates

    Returns:
    - path -> seconds per step
    """
    trials = {}
    for path in paths:
        copied = copy.deepcopy(model)
        if path.channels_last:
            copied.to(memory_format=torch.channels_last)
        optimizer, _ = make_optimizer(copied, 1e-6, fused=path.fused)
        batch = images.contiguous(memory_format=torch.channels_last) if path.channels_last else images
        trials[path] = (copied, optimizer, batch)
        train_step(copied, optimizer, batch, captions, path.amp_dtype)  # warm-up: kernels chosen, memory allocated
    seconds = {path: [] for path in paths}
    for _ in range(ROUNDS):
        for path, (copied, optimizer, batch) in trials.items():
            start = time.perf_counter()
            for _ in range(STEPS):
                train_step(copied, optimizer, batch, captions, path.amp_dtype)
            seconds[path].append((time.perf_counter() - start) / STEPS)
    return {path: statistics.median(times) for path, times in seconds.items()}


def fastest(seconds: Dict[FastPath, float]) -> FastPath:
    """The fastest path; the plain loop unless another is at least MARGIN faster."""
    best = min(seconds, key=seconds.get)
    return best if seconds[PLAIN] >= MARGIN * seconds[best] else PLAIN


def cache_path() -> Path:
    """The file of the measured choices: fast-paths.json in $CAPTIONING_CACHE_DIR or ~/.cache/captioning."""
    folder = os.environ.get("CAPTIONING_CACHE_DIR") or Path.home() / ".cache" / "captioning"
    return Path(folder) / "fast-paths.json"


def workload_key(model: nn.Module, images: torch.Tensor) -> str:
    """What a measured choice holds for: this machine, and a model of these parameters on minibatches of this shape."""
    trainable = [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return json.dumps([machine_description(), trainable, frozen, tuple(images.shape)])


def _read_choices(path: Path) -> dict:
    try:
        choices = json.loads(path.read_text())
        return choices if isinstance(choices, dict) else {}
    except (OSError, ValueError):  # none yet, or damaged: measured anew
        return {}


def choose_path(model: nn.Module, device: torch.device, images: torch.Tensor, captions: torch.Tensor) -> FastPath:
    """
    The fast path for training this model on this machine: on CUDA the rule;
    on a CPU the cached measured choice for this workload, or, the first
    time, measured now (a few seconds) and cached.

    Inputs:
    - model: the captioning model as it will train, on the CPU
    - device: where training runs
    - images, captions: one minibatch of the run (on the CPU)

    Returns:
    - the FastPath
    """
    if device.type != "cpu":
        return rule_path(device)
    key, file = workload_key(model, images), cache_path()
    choice = _read_choices(file).get(key)
    if isinstance(choice, dict) and set(choice) == {"amp", "channels_last", "fused"}:
        return FastPath(**choice)
    chosen = fastest(time_paths(model, images, captions, candidates(device)))
    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(file) as tmp:  # read again just before: another run may have added its own choice
        tmp.write_text(json.dumps({**_read_choices(file), key: asdict(chosen)}, indent=1))
    return chosen
