"""
CaptioningRNN: its parts, its training loss with the caption shift, and
greedy sampling; hello_rnn_lstm_captioning.

The model's parts are found by type (never by attribute name), and the tests
recompute the model's results from those parts by hand.
"""

import pytest
import torch
from torch import nn

from _grading import (
    ENCODER_CHANNELS,
    END,
    HIDDEN_DIM as H,
    NULL,
    START,
    WORDVEC_DIM as W,
    check_close,
    check_tensor,
    expect,
    forward,
    Lazy,
    make_model,
    modules_of_type,
    random_captions,
    random_images,
)
from _captioning import CELL_TYPES, RECURRENT, V, check_greedy, for_sampling, parts_of, sample, teacher_forced
from _references import temporal_loss

pytestmark = pytest.mark.part("captioning")

@pytest.fixture(scope="module")
def models(impl):
    """One shared model per cell type (built on first use); tests must not change them."""
    return {cell_type: Lazy(lambda cell_type=cell_type: make_model(impl, cell_type)) for cell_type in CELL_TYPES}


def test_hello_prints_the_greeting(impl, capsys):
    api_hello = getattr(impl, "hello_rnn_lstm_captioning", None)
    expect(api_hello is not None, "hello_rnn_lstm_captioning is missing")
    api_hello()
    printed = capsys.readouterr().out
    expect(printed == "Hello from rnn_lstm_captioning.py!\n", f"hello_rnn_lstm_captioning printed {printed!r}")


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_has_exactly_the_parameters_of_its_parts(impl, models, cell_type):
    model = models[cell_type].get()
    for other in set(RECURRENT.values()) - {RECURRENT[cell_type]}:
        found = [m for m in model.modules() if type(m) is getattr(impl, other)]
        expect(not found, f'CaptioningRNN(cell_type="{cell_type}") must not hold a {other}')
    parts = parts_of(model, cell_type)
    modules = [parts.encoder, parts.embedding, parts.recurrent, parts.feature_proj, parts.output_proj]
    linears = modules_of_type(model, nn.Linear, exclude=parts.encoder)
    expect(
        len(linears) == 2, f"CaptioningRNN must have two nn.Linear layers besides the encoder's; found {len(linears)}"
    )
    expected = {id(p) for part in modules for p in part.parameters()}
    actual = {id(p) for p in model.parameters()}
    expect(
        actual == expected,
        f'CaptioningRNN(cell_type="{cell_type}") must have the parameters of its encoder, WordEmbedding, '
        f"two Linear layers and {RECURRENT[cell_type]} and no others; "
        f"{len(actual - expected)} extra, {len(expected - actual)} missing",
    )
    recurrent_sizes = {"rnn": W * H + H * H + H, "lstm": 4 * (W * H + H * H + H), "attn": 4 * (W * H + 2 * H * H + H)}
    decoder = V * W + (ENCODER_CHANNELS * H + H) + (H * V + V) + recurrent_sizes[cell_type]
    counted = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in parts.encoder.parameters())
    expect(
        counted == decoder,
        f"CaptioningRNN's decoder must have {decoder} parameters (V={V}, W={W}, H={H}); got {counted}",
    )


# ---------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_loss_reads_words_up_to_the_last_and_predicts_from_the_second(impl, models, cell_type):
    model = models[cell_type].get()
    parts = parts_of(model, cell_type)
    images = random_images(2, seed=1)
    captions = random_captions(2, 6, seed=2, pad=2)  # <NULL> targets are ignored
    with torch.no_grad():
        loss = forward(model, images, captions)
        scores, _, _ = teacher_forced(parts, cell_type, images, captions[:, :-1])
    check_tensor("CaptioningRNN.forward", loss, (), torch.float32)
    expected = temporal_loss(scores, captions[:, 1:], ignore_index=NULL)
    check_close(
        f'CaptioningRNN.forward ("{cell_type}": inputs captions[:, :-1], targets captions[:, 1:], '
        f"h0 from the projected image features, <NULL> ignored)",
        loss,
        expected,
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_loss_trains_every_decoder_part(impl, cell_type):
    model = make_model(impl, cell_type, seed=3)
    parts = parts_of(model, cell_type)
    for weight in parts.encoder.parameters():
        weight.requires_grad_(False)  # saves the encoder's backward pass; the test is about the decoder
    loss = forward(model, random_images(2, seed=4), random_captions(2, 4, seed=5))
    loss.backward()
    for part in (parts.embedding, parts.recurrent, parts.feature_proj, parts.output_proj):
        for weight in part.parameters():
            expect(
                weight.grad is not None and weight.grad.abs().sum() > 0,
                f"CaptioningRNN.forward: the loss has no gradient for a parameter of the {type(part).__name__}",
            )


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_works_in_float64(impl, cell_type):
    model = make_model(impl, cell_type, seed=6).double()
    loss = forward(model, random_images(2, seed=7), random_captions(2, 4, seed=8))
    check_tensor("CaptioningRNN.forward in float64", loss, (), torch.float64)
    expect(torch.isfinite(loss), f"CaptioningRNN.forward in float64 gave {loss}")


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling_models(impl):
    """Per cell type a model for sampling (for_sampling) that never says <END>."""
    return {
        cell_type: Lazy(lambda cell_type=cell_type: for_sampling(make_model(impl, cell_type, seed=10), cell_type))
        for cell_type in CELL_TYPES
    }


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_sample_returns_generated_words_of_max_length(impl, sampling_models, cell_type):
    model = sampling_models[cell_type].get()
    images = random_images(3, seed=11)
    captions, _ = sample(model, cell_type, images, max_length=5)
    check_tensor("CaptioningRNN.sample captions", captions, (3, 5), torch.int64)
    expect(
        ((captions >= 0) & (captions < V)).all(), f"CaptioningRNN.sample returned words outside [0, {V}): {captions}"
    )
    expect(
        (captions[:, 0] != START).all(),
        "CaptioningRNN.sample: captions[:, 0] must be the first generated word, not <START>",
    )
    default_captions, _ = sample(model, cell_type, images)
    check_tensor("CaptioningRNN.sample captions with the default max_length=15", default_captions, (3, 15), torch.int64)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_sample_is_greedy_each_word_is_the_argmax_given_the_words_before(impl, sampling_models, cell_type):
    model = sampling_models[cell_type].get()
    images = random_images(4, seed=12)
    captions, attn_weights = sample(model, cell_type, images, max_length=8)
    check_tensor("CaptioningRNN.sample captions", captions, (4, 8), torch.int64)
    check_greedy(model, cell_type, images, captions, attn_weights)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_sample_goes_on_with_each_caption_until_its_own_end(impl, cell_type):
    # <END>'s bias is set between the images' first-word margins, so that
    # some captions end at once and the others go on: a caption that has
    # ended must not end the others.
    model = for_sampling(make_model(impl, cell_type, seed=15), cell_type, end_bias=0.0)
    parts = parts_of(model, cell_type)
    images = random_images(6, seed=16)
    with torch.no_grad():
        first, _, _ = teacher_forced(parts, cell_type, images, torch.full((6, 1), START))
    first = first[:, 0]  # (N, V), <END>'s bias still 0
    others = first.clone()
    others[:, END] = -float("inf")
    margins = (others.max(dim=1).values - first[:, END]).sort().values  # <END> wins where its bias is larger
    gaps = margins[2:5] - margins[1:4]  # split between 2-4 ending captions, where the margins lie farthest apart
    split = int(gaps.argmax()) + 1
    with torch.no_grad():
        parts.output_proj.bias[END] = float(margins[split] + margins[split + 1]) / 2
    captions, attn_weights = sample(model, cell_type, images, max_length=6)
    check_tensor("CaptioningRNN.sample captions", captions, (6, 6), torch.int64)
    check_greedy(model, cell_type, images, captions, attn_weights)


# The devices of this machine: the CUDA case runs where there is a GPU.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_sample_returns_captions_on_the_images_device_and_attention_weights_on_the_cpu(impl, device):
    model = make_model(impl, "attn", seed=13).to(device)
    captions, attn_weights = sample(model, "attn", random_images(2, seed=14).to(device), max_length=3)
    expect(captions.device.type == device, "CaptioningRNN.sample captions must be on the images' device")
    expect(attn_weights.device.type == "cpu", "CaptioningRNN.sample attn_weights_all must be on the CPU")
    loss = forward(model, random_images(2, seed=14).to(device), random_captions(2, 4).to(device))
    assert loss.device.type == device
