"""The image encoder's test helpers, shared by the graded tests and those beyond the contract."""

import os
import urllib.request

import pytest
import torch
import torch.hub
import torchvision

from _grading import build


def make_encoder(impl, seed=0):
    """A randomly initialised ImageEncoder of the module under test, in eval mode."""
    torch.manual_seed(seed)
    encoder = build(impl, "ImageEncoder", pretrained=False, verbose=False)
    return encoder.eval()


def regnet_trunk_keys():
    """State-dict keys of torchvision's regnet_x_400mf without its classifier head fc."""
    return [k for k in torchvision.models.regnet_x_400mf(weights=None).state_dict() if not k.startswith("fc.")]


def regnet_state_of(encoder, keys):
    """
    The encoder's RegNet tensors under torchvision's names: the encoder's
    state-dict key that equals or ends with each RegNet key (whatever the
    attribute that holds the backbone is called).
    """
    encoder_state = encoder.state_dict()
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
    """Make every urlopen raise error."""

    def urlopen(*args, **kwargs):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)


def cache_random_weights(hub_dir, seed=8) -> dict:
    """
    A random RegNetX-400MF state dict placed in torchvision's cache under
    hub_dir as both of its ImageNet weight files (so either version loads
    it), offline. Returns the state dict.
    """
    torch.manual_seed(seed)
    cached = torchvision.models.regnet_x_400mf(weights=None).state_dict()
    checkpoints = hub_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(cached, checkpoints / WEIGHT_FILES[0])
    os.link(checkpoints / WEIGHT_FILES[0], checkpoints / WEIGHT_FILES[1])
    return cached
