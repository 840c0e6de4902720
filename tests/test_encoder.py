"""ImageEncoder: RegNetX-400MF c5 features of ImageNet-normalised images."""

import math
import os
import re
import time
import urllib.request
from urllib.error import URLError

import pytest
import torch
import torch.hub
import torchvision
from torchvision.transforms import Normalize

from _grading import ENCODER_CHANNELS, build, check_close, check_tensor, expect, forward, Lazy, random_images
from _references import IMAGENET_MEAN, IMAGENET_STD


def make_encoder(impl, seed=0):
    """A randomly initialised ImageEncoder of the module under test, in eval mode."""
    torch.manual_seed(seed)
    encoder = build(impl, "ImageEncoder", pretrained=False, verbose=False)
    return encoder.eval()


@pytest.fixture(scope="module")
def encoder(impl):
    """The module's shared eval-mode encoder; tests must not change it."""
    return Lazy(lambda: make_encoder(impl))


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


def reference_c5(encoder, images: torch.Tensor) -> torch.Tensor:
    """
    c5 of the encoder's RegNet weights, computed by torchvision's own
    regnet_x_400mf on images normalised with torchvision's Normalize.

    Inputs:
    - images: float (B, 3, H, W)
    """
    regnet = torchvision.models.regnet_x_400mf(weights=None).to(images.dtype).eval()
    state = regnet_state_of(encoder, [k for k in regnet.state_dict() if not k.startswith("fc.")])
    regnet.load_state_dict(state, strict=False)
    normalized = Normalize(IMAGENET_MEAN, IMAGENET_STD)(images)
    with torch.no_grad():
        # trunk_output.block4 is the last block of the trunk.
        return regnet.trunk_output(regnet.stem(normalized))


def test_image_encoder_out_channels_is_400(impl, encoder):
    channels = encoder.get().out_channels
    expect(channels == ENCODER_CHANNELS, f"ImageEncoder.out_channels must be 400; got {channels}")


@pytest.mark.parametrize("height,width", [(112, 112), (64, 96)])
def test_image_encoder_output_is_a_grid_32_times_smaller(impl, encoder, height, width):
    images = random_images(2, 112)[:, :, :height, :width].contiguous()
    with torch.no_grad():
        c5 = forward(encoder.get(), images)
    # RegNet rounds the grid up: 112 / 32 = 3.5 gives 4.
    check_tensor("ImageEncoder.forward", c5, (2, 400, math.ceil(height / 32), math.ceil(width / 32)), torch.float32)


def test_image_encoder_uint8_and_float_images_agree_in_eval_mode(impl, encoder):
    images = random_images(2, 64, seed=1)
    with torch.no_grad():
        from_uint8 = forward(encoder.get(), images)
        from_float = forward(encoder.get(), images.float() / 255)
    check_close(
        "ImageEncoder.forward: uint8 images against the same images as float in [0, 1]",
        from_uint8,
        from_float,
        rtol=1e-4,
        atol=1e-5,
    )


def test_image_encoder_normalises_with_imagenet_statistics_and_does_not_clamp(impl, encoder):
    # Values outside [0, 1] too: float images are used as given.
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 1.4 - 0.2
    with torch.no_grad():
        c5 = forward(encoder.get(), images)
    expected = reference_c5(encoder.get(), images)
    check_close(
        "ImageEncoder.forward (ImageNet mean/std normalisation, then RegNet trunk_output.block4)",
        c5,
        expected,
        rtol=1e-4,
        atol=1e-4,
    )


def test_image_encoder_has_only_the_regnets_parameters(impl, encoder):
    model = encoder.get()
    regnet = torchvision.models.regnet_x_400mf(weights=None)
    trunk = sum(p.numel() for name, p in regnet.named_parameters() if not name.startswith("fc."))
    full = sum(p.numel() for p in regnet.parameters())
    count = sum(p.numel() for p in model.parameters())
    expect(
        count in (trunk, full),
        f"ImageEncoder must have no learnable parameters besides RegNetX-400MF's: "
        f"expected {trunk} (trunk) or {full} (with the classifier head), got {count}",
    )
    regnet_state_of(model, regnet_trunk_keys())


def test_image_encoder_works_in_float64(impl):
    encoder = make_encoder(impl, seed=3).double()
    images = random_images(2, 32, seed=4)
    with torch.no_grad():
        from_uint8 = forward(encoder, images)
        from_float = forward(encoder, images.double() / 255)
    check_tensor("ImageEncoder.forward in float64 (uint8 images)", from_uint8, (2, 400, 1, 1), torch.float64)
    check_tensor("ImageEncoder.forward in float64 (float64 images)", from_float, (2, 400, 1, 1), torch.float64)
    check_close(
        "ImageEncoder.forward in float64: uint8 against float images", from_uint8, from_float, rtol=1e-9, atol=1e-9
    )


def test_image_encoder_forward_keeps_train_and_eval_mode(impl):
    encoder = make_encoder(impl, seed=5)
    images = random_images(2, 64, seed=6)
    encoder.train()
    forward(encoder, images)
    still_training = all(m.training for m in encoder.modules())
    encoder.eval()
    with torch.no_grad():
        forward(encoder, images)
    still_eval = not any(m.training for m in encoder.modules())
    expect(still_training, "ImageEncoder.forward must not switch a model in train() mode to eval mode")
    expect(still_eval, "ImageEncoder.forward must not switch a model in eval() mode to train mode")


def test_image_encoder_verbose_prints_the_c5_shape_of_a_224_batch(impl, capsys):
    torch.manual_seed(7)
    build(impl, "ImageEncoder", pretrained=False, verbose=True)
    printed = capsys.readouterr().out
    expect(
        re.search(r"2\D+400\D+7\D+7", printed),
        f"ImageEncoder(verbose=True) must print the c5 shape (2, 400, 7, 7) of a (2, 3, 224, 224) batch; "
        f"printed {printed!r}",
    )
    build(impl, "ImageEncoder", pretrained=False, verbose=False)
    printed = capsys.readouterr().out
    expect(printed == "", f"ImageEncoder(verbose=False) must print nothing; printed {printed!r}")


def test_image_encoder_verbose_changes_nothing_but_the_printout(impl, capsys):
    # The dummy batch must not leave a trace: run in train mode it would move
    # every batch-norm running statistic (of the ImageNet weights, too) towards
    # those of random noise.
    torch.manual_seed(10)
    quiet = build(impl, "ImageEncoder", pretrained=False, verbose=False).state_dict()
    torch.manual_seed(10)
    verbose = build(impl, "ImageEncoder", pretrained=False, verbose=True).state_dict()
    capsys.readouterr()
    changed = [key for key in quiet if not torch.equal(quiet[key], verbose[key])]
    expect(
        not changed,
        f"ImageEncoder(verbose=True) changed {len(changed)} weights or buffers (e.g. {changed[:3]}) with its dummy "
        f"batch; run it in eval mode under torch.no_grad() and restore the mode afterwards",
    )


# ---------------------------------------------------------------------------
# pretrained=True, offline
# ---------------------------------------------------------------------------

WEIGHT_FILES = [
    os.path.basename(weights.url)
    for weights in (
        torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V1,
        torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V2,
    )
]


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub directory under tmp_path, for torchvision's weight cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored afterwards; set_dir changes it
    torch.hub.set_dir(str(hub))
    return hub


def forbid_network(monkeypatch, error):
    """Make every urlopen raise error."""

    def urlopen(*args, **kwargs):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)


def test_image_encoder_pretrained_loads_cached_weights_without_network(impl, hub_dir, monkeypatch):
    forbid_network(monkeypatch, AssertionError("ImageEncoder(pretrained=True) tried to download cached weights"))
    torch.manual_seed(8)
    cached = torchvision.models.regnet_x_400mf(weights=None).state_dict()
    checkpoints = hub_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    # Both ImageNet weight versions of torchvision hold the same tensors here.
    torch.save(cached, checkpoints / WEIGHT_FILES[0])
    os.link(checkpoints / WEIGHT_FILES[0], checkpoints / WEIGHT_FILES[1])

    torch.manual_seed(9)
    encoder = build(impl, "ImageEncoder", pretrained=True, verbose=False)
    loaded = regnet_state_of(encoder, regnet_trunk_keys())
    for key, value in loaded.items():
        if not torch.equal(value, cached[key]):
            pytest.fail(f"ImageEncoder(pretrained=True) did not load the cached weights: {key} differs", pytrace=False)


def test_image_encoder_pretrained_without_network_or_cache_fails_fast_with_advice(impl, hub_dir, monkeypatch):
    forbid_network(monkeypatch, URLError("no network in this test"))
    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        impl.ImageEncoder(pretrained=True, verbose=False)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    expect(elapsed < 10, f"ImageEncoder(pretrained=True) took {elapsed:.1f} s to fail without a network")
    expect(
        any(name in message for name in WEIGHT_FILES),
        f"the error must name the weights file ({WEIGHT_FILES}); got {message!r}",
    )
    expect(
        str(hub_dir) in message,
        f"the error must name torchvision's cache directory {hub_dir / 'checkpoints'}; got {message!r}",
    )
    expect("pretrained=False" in message, f"the error must say that pretrained=False works offline; got {message!r}")
