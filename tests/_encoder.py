"""
The image encoder's test helpers, shared by the graded tests and those beyond the contract.

The encoder under test lives in the worker (tests/_grading.py): it is a
Remote; its tensors come back by value through probes.
"""

import os
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision

from _grading import build, method, probe, seed_worker, shared_folder


def make_encoder(impl, seed=0):
    """A randomly initialised ImageEncoder of the module under test, in eval mode (a Remote)."""
    seed_worker(seed)
    encoder = build(impl, "ImageEncoder", pretrained=False, verbose=False)
    return method(encoder, "eval")


def regnet_trunk_keys():
    """State-dict keys of torchvision's regnet_x_400mf without its classifier head fc."""
    return [k for k in torchvision.models.regnet_x_400mf(weights=None).state_dict() if not k.startswith("fc.")]


def regnet_state_of(encoder, keys):
    """
    The encoder's RegNet tensors under torchvision's names (copies, from the
    worker): the encoder's state-dict key that equals or ends with each
    RegNet key (whatever the attribute that holds the backbone is called).
    """
    encoder_state = probe("ImageEncoder.state_dict", "state_dict", encoder)
    state = {}
    for key in keys:
        matches = [k for k in encoder_state if k == key or k.endswith("." + key)]
        if not matches:
            pytest.fail(f"ImageEncoder holds no RegNetX-400MF tensor named like {key!r}", pytrace=False)
        state[key] = encoder_state[matches[0]]
    return state


WEIGHT_FILES = [
    os.path.basename(weights.url)
    for weights in (
        torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V1,
        torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V2,
    )
]


def forbid_network(monkeypatch, error):
    """
    Make every urlopen of THIS process raise error. It does not reach the
    worker, whose sandbox has no network at all (helper/grading/sandbox.py).
    """

    def urlopen(*args, **kwargs):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)


@contextmanager
def worker_hub_dir(label: str = "ImageEncoder"):
    """
    A fresh torch hub directory that the worker reads, under shared_folder():
    while in use, the worker's TORCH_HOME is its parent, so torchvision in the
    worker looks for weights in <hub>/checkpoints. Yields the hub directory
    (a Path, not created yet: cache_random_weights fills it). The worker's
    TORCH_HOME is restored afterwards.

    Inputs:
    - label: the API names failures of setting the variable are reported under
    """
    torch_home = Path(tempfile.mkdtemp(prefix="torch-home-", dir=shared_folder()))
    torch_home.chmod(0o755)  # the sandbox's user reads it
    previous = probe(label, "replace_env", "TORCH_HOME", str(torch_home))
    try:
        yield torch_home / "hub"
    finally:
        try:
            probe(label, "replace_env", "TORCH_HOME", previous)
        except pytest.fail.Exception:
            pass  # the worker was lost: a new one starts with its own environment


def cache_random_weights(hub_dir, seed=8) -> dict:
    """
    A random RegNetX-400MF state dict placed in torchvision's cache under
    hub_dir as both of its ImageNet weight files (so either version loads
    it), offline, readable by the worker's sandbox. Returns the state dict.
    """
    with torch.random.fork_rng():  # the judge's own RNG is left as it was
        torch.manual_seed(seed)
        cached = torchvision.models.regnet_x_400mf(weights=None).state_dict()
    hub_dir = Path(hub_dir)
    checkpoints = hub_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(cached, checkpoints / WEIGHT_FILES[0])
    os.link(checkpoints / WEIGHT_FILES[0], checkpoints / WEIGHT_FILES[1])
    for path in (hub_dir, checkpoints):
        path.chmod(0o755)
    (checkpoints / WEIGHT_FILES[0]).chmod(0o644)
    return cached
