"""
ImageEncoder: RegNetX-400MF c5 features of ImageNet-normalised images.

The standard assignment gives the encoder's code: its checks run and report
as before, for 0 points (unscored).
"""


import pytest
import torch
import torchvision
from torchvision.transforms import Normalize

from _encoder import cache_random_weights, make_encoder, regnet_state_of, regnet_trunk_keys, worker_hub_dir
from _grading import (
    ENCODER_CHANNELS,
    Lazy,
    api,
    build,
    check_close,
    check_tensor,
    expect,
    forward,
    method,
    printed_by,
    probe,
    random_images,
    same,
    seed_worker,
)
from _references import IMAGENET_MEAN, IMAGENET_STD

pytestmark = [pytest.mark.part("encoder"), pytest.mark.unscored]


@pytest.fixture(scope="module")
def encoder(impl):
    """The module's shared eval-mode encoder (a Remote); tests must not change it."""
    return Lazy(lambda: make_encoder(impl))


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


def test_image_encoder_output_of_112x112_images_is_a_4x4_grid(impl, encoder):
    c5 = forward(encoder.get(), random_images(2, 112))
    # RegNet rounds the grid up: 112 / 32 = 3.5 gives 4.
    check_tensor("ImageEncoder.forward", c5, (2, 400, 4, 4), torch.float32)


def test_image_encoder_uint8_and_float_images_agree_in_eval_mode(impl, encoder):
    images = random_images(2, seed=1)
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
    images = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 1.4 - 0.2
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
    count = sum(p.numel() for p in probe("ImageEncoder.parameters", "parameters", model, True).values())
    expect(
        count in (trunk, full),
        f"ImageEncoder must have no learnable parameters besides RegNetX-400MF's: "
        f"expected {trunk} (trunk) or {full} (with the classifier head), got {count}",
    )
    regnet_state_of(model, regnet_trunk_keys())


def test_image_encoder_works_in_float64(impl):
    encoder = method(make_encoder(impl, seed=3), "double")
    images = random_images(2, seed=4)
    from_uint8 = forward(encoder, images)
    from_float = forward(encoder, images.double() / 255)
    check_tensor("ImageEncoder.forward in float64 (uint8 images)", from_uint8, (2, 400, 4, 4), torch.float64)
    check_tensor("ImageEncoder.forward in float64 (float64 images)", from_float, (2, 400, 4, 4), torch.float64)
    check_close(
        "ImageEncoder.forward in float64: uint8 against float images", from_uint8, from_float, rtol=1e-9, atol=1e-9
    )


def test_image_encoder_forward_keeps_train_and_eval_mode(impl):
    encoder = make_encoder(impl, seed=5)
    images = random_images(2, seed=6)
    method(encoder, "train")
    forward(encoder, images)
    still_training = all(probe("ImageEncoder.modules", "training_modes", encoder))
    method(encoder, "eval")
    forward(encoder, images)
    still_eval = not any(probe("ImageEncoder.modules", "training_modes", encoder))
    expect(still_training, "ImageEncoder.forward must not switch a model in train() mode to eval mode")
    expect(still_eval, "ImageEncoder.forward must not switch a model in eval() mode to train mode")


def test_image_encoder_verbose_prints_something_and_quiet_prints_nothing(impl):
    # What it prints is the solution's own business; that it prints is the contract.
    seed_worker(7)
    printed = printed_by("ImageEncoder", api(impl, "ImageEncoder"), pretrained=False, verbose=True)
    expect(printed.strip() != "", "ImageEncoder(verbose=True) must print something about the c5 features")
    printed = printed_by("ImageEncoder", api(impl, "ImageEncoder"), pretrained=False, verbose=False)
    expect(printed == "", f"ImageEncoder(verbose=False) must print nothing; printed {printed!r}")


# ---------------------------------------------------------------------------
# pretrained=True, offline
# ---------------------------------------------------------------------------


def test_image_encoder_pretrained_loads_cached_weights_without_network(impl):
    # The worker's sandbox has no network: the weights can only come from the cache laid out here.
    with worker_hub_dir("ImageEncoder(pretrained=True)") as hub_dir:
        cached = cache_random_weights(hub_dir)
        seed_worker(9)
        encoder = build(impl, "ImageEncoder", pretrained=True, verbose=False)
    # The learnable weights; the standard assignment's encoder passes a dummy
    # batch in train mode, which moves the batch-norm running statistics.
    weights = [name for name, _ in torchvision.models.regnet_x_400mf(weights=None).named_parameters()]
    loaded = regnet_state_of(encoder, [key for key in regnet_trunk_keys() if key in weights])
    for key, value in loaded.items():
        if not same(value, cached[key]):
            pytest.fail(f"ImageEncoder(pretrained=True) did not load the cached weights: {key} differs", pytrace=False)
