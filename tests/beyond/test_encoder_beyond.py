"""
Beyond the contract: what our ImageEncoder does more than the standard assignment asks.

Images of any size, a printout that names the c5 shape, a dummy batch that
leaves no trace, the cached ImageNet weights loaded exactly (batch-norm
statistics too), no deprecation warning, and a clear error without a network.

The encoder runs in the module's worker (tests/_grading.py): what it prints,
warns and holds comes back through probes, and the worker's environment
(its torch hub, its proxies) is set for a test and restored afterwards.
"""

import math
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from _encoder import (
    WEIGHT_FILES,
    cache_random_weights,
    make_encoder,
    regnet_state_of,
    regnet_trunk_keys,
    worker_hub_dir,
)
from _grading import (
    api,
    build,
    check_tensor,
    expect,
    forward,
    printed_by,
    probe,
    random_images,
    same,
    seed_worker,
)
from helper.grading.remote import RemoteError, WorkerLost

# Proxies that refuse every connection: the worker's downloads fail at once, also where it runs
# without its sandbox (whose network namespace has no network anyway).
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


@contextmanager
def worker_env(label: str, **values):
    """The worker's environment variables set to values while in use, restored afterwards."""
    previous = {}
    try:
        for name, value in values.items():
            previous[name] = probe(label, "replace_env", name, value)
        yield
    finally:
        for name, value in previous.items():
            try:
                probe(label, "replace_env", name, value)
            except pytest.fail.Exception:
                pass  # the worker was lost: a new one starts with its own environment


@pytest.mark.parametrize("height,width", [(64, 96), (32, 32)])
def test_image_encoder_output_is_a_grid_32_times_smaller_for_any_image_size(impl, height, width):
    images = random_images(2, 112)[:, :, :height, :width].contiguous()
    c5 = forward(make_encoder(impl), images)
    check_tensor("ImageEncoder.forward", c5, (2, 400, math.ceil(height / 32), math.ceil(width / 32)), torch.float32)


def test_image_encoder_verbose_prints_the_c5_shape_of_a_224_batch(impl):
    seed_worker(7)
    printed = printed_by("ImageEncoder", api(impl, "ImageEncoder"), pretrained=False, verbose=True)
    expect(
        re.search(r"2\D+400\D+7\D+7", printed),
        f"ImageEncoder(verbose=True) must print the c5 shape (2, 400, 7, 7) of a (2, 3, 224, 224) batch; "
        f"printed {printed!r}",
    )
    printed = printed_by("ImageEncoder", api(impl, "ImageEncoder"), pretrained=False, verbose=False)
    expect(printed == "", f"ImageEncoder(verbose=False) must print nothing; printed {printed!r}")


def test_image_encoder_verbose_changes_nothing_but_the_printout(impl):
    # The dummy batch must not leave a trace: run in train mode it would move
    # every batch-norm running statistic (of the ImageNet weights, too) towards
    # those of random noise.
    seed_worker(10)
    quiet = probe("ImageEncoder.state_dict", "state_dict", build(impl, "ImageEncoder", pretrained=False, verbose=False))
    seed_worker(10)
    verbose = probe("ImageEncoder.state_dict", "state_dict", build(impl, "ImageEncoder", pretrained=False, verbose=True))
    changed = [key for key in quiet if key not in verbose or not same(quiet[key], verbose[key])]
    expect(
        not changed,
        f"ImageEncoder(verbose=True) changed {len(changed)} weights or buffers (e.g. {changed[:3]}) with its dummy "
        f"batch; run it in eval mode under torch.no_grad() and restore the mode afterwards",
    )


def test_image_encoder_pretrained_without_network_or_cache_fails_fast_with_advice(impl):
    # An empty torch home of the worker's own, where it can write (its /tmp), and no network.
    torch_home = Path("/tmp") / f"torch-home-no-cache-{uuid.uuid4().hex}"
    hub_dir = torch_home / "hub"
    label = "ImageEncoder(pretrained=True)"
    try:
        with worker_env(label, TORCH_HOME=str(torch_home), **NO_NETWORK):
            started = time.monotonic()
            try:
                api(impl, "ImageEncoder")(pretrained=True, verbose=False)
            except RemoteError as error:
                raised = error
            except WorkerLost as error:
                pytest.fail(f"{label} without a network or a cached file: {error}", pytrace=False)
            else:
                pytest.fail(f"{label} without a network or a cached file must raise a RuntimeError; it raised nothing",
                            pytrace=False)
            elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(torch_home, ignore_errors=True)  # there only where the worker runs without its sandbox
    expect(
        raised.type_name == "RuntimeError",
        f"{label} without a network or a cached file must raise a RuntimeError; "
        f"it raised {raised.type_name}: {raised.message}",
    )
    message = raised.message
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


def test_image_encoder_pretrained_loads_the_cached_batch_norm_statistics_exactly(impl):
    # No network: a download of the cached weights fails (the module says so).
    with worker_hub_dir("ImageEncoder(pretrained=True)") as hub_dir, worker_env("ImageEncoder", **NO_NETWORK):
        cached = cache_random_weights(hub_dir)
        encoder = build(impl, "ImageEncoder", pretrained=True, verbose=True)
        state = regnet_state_of(encoder, regnet_trunk_keys())
    for key, value in state.items():
        expect(same(value, cached[key]), f"ImageEncoder(pretrained=True, verbose=True): {key} differs from the file")


def test_image_encoder_is_built_without_a_deprecation_warning(impl):
    # Every warning, even one the worker gave before (building an earlier encoder).
    caught = probe("ImageEncoder", "warnings_of", api(impl, "ImageEncoder"), pretrained=False, verbose=False)
    messages = [w["message"] for w in caught if w["user_or_deprecation"]]
    expect(not messages, f"ImageEncoder(pretrained=False) warned: {messages}")
