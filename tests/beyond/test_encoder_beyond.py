"""
Beyond the contract: what our ImageEncoder does more than the standard assignment asks.

Images of any size, a printout that names the c5 shape, a dummy batch that
leaves no trace, the cached ImageNet weights loaded exactly (batch-norm
statistics too), no deprecation warning, and a clear error without a network.
"""

import math
import re
import time
import warnings
from urllib.error import URLError

import pytest
import torch

from _encoder import WEIGHT_FILES, cache_random_weights, forbid_network, make_encoder, regnet_state_of, regnet_trunk_keys
from _grading import build, check_tensor, expect, forward, random_images, same


@pytest.mark.parametrize("height,width", [(64, 96), (32, 32)])
def test_image_encoder_output_is_a_grid_32_times_smaller_for_any_image_size(impl, height, width):
    images = random_images(2, 112)[:, :, :height, :width].contiguous()
    with torch.no_grad():
        c5 = forward(make_encoder(impl), images)
    check_tensor("ImageEncoder.forward", c5, (2, 400, math.ceil(height / 32), math.ceil(width / 32)), torch.float32)


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
    changed = [key for key in quiet if not same(quiet[key], verbose[key])]
    expect(
        not changed,
        f"ImageEncoder(verbose=True) changed {len(changed)} weights or buffers (e.g. {changed[:3]}) with its dummy "
        f"batch; run it in eval mode under torch.no_grad() and restore the mode afterwards",
    )




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


def test_image_encoder_pretrained_loads_the_cached_batch_norm_statistics_exactly(impl, hub_dir, monkeypatch):
    forbid_network(monkeypatch, AssertionError("ImageEncoder(pretrained=True) tried to download cached weights"))
    cached = cache_random_weights(hub_dir)
    encoder = build(impl, "ImageEncoder", pretrained=True, verbose=True)
    for key, value in regnet_state_of(encoder, regnet_trunk_keys()).items():
        expect(same(value, cached[key]), f"ImageEncoder(pretrained=True, verbose=True): {key} differs from the file")


def test_image_encoder_is_built_without_a_deprecation_warning(impl):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(impl, "ImageEncoder", pretrained=False, verbose=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, (UserWarning, DeprecationWarning))]
    expect(not messages, f"ImageEncoder(pretrained=False) warned: {messages}")
