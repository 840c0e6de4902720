"""
CaptioningRNN: its parts, its training loss with the caption shift, and
greedy sampling; hello_rnn_lstm_captioning.

The model's parts are found by type (never by attribute name), and the tests
recompute the model's results from those parts by hand.
"""

from types import SimpleNamespace

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
    WORD_TO_IDX,
    check_close,
    check_tensor,
    expect,
    forward,
    Lazy,
    make_model,
    method,
    modules_of_type,
    random_captions,
    random_images,
)
from _references import attention, temporal_loss
from helper.decoding import model_parts

CELL_TYPES = ["rnn", "lstm", "attn"]
RECURRENT = {"rnn": "RNN", "lstm": "LSTM", "attn": "AttentionLSTM"}
V = len(WORD_TO_IDX)


def parts_of(model, cell_type):
    """The model's parts, found by type (helper.decoding.model_parts), or a failure naming what is wrong."""
    try:
        parts = model_parts(model)
    except ValueError as error:
        pytest.fail(f"CaptioningRNN: {error}", pytrace=False)
    if parts.cell_type != cell_type:
        pytest.fail(
            f'CaptioningRNN(cell_type="{cell_type}") must hold a {RECURRENT[cell_type]}; '
            f"found a {type(parts.recurrent).__name__}",
            pytrace=False,
        )
    return parts


def initial_state(parts, cell_type, images):
    """
    By hand, from the parts: h0 (N, H) = feature projection of the mean of c5
    for "rnn"/"lstm"; A (N, H, Da, Da) = the projection at every location for "attn".
    """
    c5 = forward(parts.encoder, images)
    if cell_type == "attn":
        return parts.feature_proj(c5.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return parts.feature_proj(c5.mean(dim=(2, 3)))


def teacher_forced(parts, cell_type, images, words_in):
    """Scores (N, T, V) and hidden states (N, T, H) for input words (N, T), computed from the parts."""
    state = initial_state(parts, cell_type, images)
    h = forward(parts.recurrent, forward(parts.embedding, words_in), state)
    return parts.output_proj(h), h, state


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
    for param in parts.encoder.parameters():
        param.requires_grad_(False)  # saves the encoder's backward pass; the test is about the decoder
    loss = forward(model, random_images(2, 32, seed=4), random_captions(2, 4, seed=5))
    loss.backward()
    for part in (parts.embedding, parts.recurrent, parts.feature_proj, parts.output_proj):
        for param in part.parameters():
            expect(
                param.grad is not None and param.grad.abs().sum() > 0,
                f"CaptioningRNN.forward: the loss has no gradient for a parameter of the {type(part).__name__}",
            )


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_works_in_float64(impl, cell_type):
    model = make_model(impl, cell_type, seed=6).double()
    loss = forward(model, random_images(2, 32, seed=7), random_captions(2, 4, seed=8))
    check_tensor("CaptioningRNN.forward in float64", loss, (), torch.float64)
    expect(torch.isfinite(loss), f"CaptioningRNN.forward in float64 gave {loss}")


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling_models(impl):
    """
    Per cell type a model whose output layer never picks <START> or <END>,
    with no other bias and large weights, so that every greedy word depends
    on the hidden state (with small random weights the bias alone would pick
    the same word at every step, whatever the decoder does).
    """

    def make(cell_type):
        model = make_model(impl, cell_type, seed=10)
        output_proj = parts_of(model, cell_type).output_proj
        with torch.no_grad():
            output_proj.weight.mul_(20)
            output_proj.bias.zero_()
            output_proj.bias[START] = output_proj.bias[END] = -1000
        return model

    return {cell_type: Lazy(lambda cell_type=cell_type: make(cell_type)) for cell_type in CELL_TYPES}


def sample(model, cell_type, images, **kwargs):
    """model.sample; for "attn" also checks that it returns (captions, attn_weights)."""
    result = method(model, "sample", images, **kwargs)
    if cell_type == "attn":
        if not isinstance(result, tuple) or len(result) != 2:
            pytest.fail(
                'CaptioningRNN.sample with cell_type="attn" must return (captions, attn_weights_all)', pytrace=False
            )
        return result
    if isinstance(result, tuple):
        pytest.fail(
            f'CaptioningRNN.sample with cell_type="{cell_type}" must return captions only, not a tuple', pytrace=False
        )
    return result, None


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
    parts = parts_of(model, cell_type)
    images = random_images(4, seed=12)
    captions, attn_weights = sample(model, cell_type, images, max_length=8)
    check_tensor("CaptioningRNN.sample captions", captions, (4, 8), torch.int64)
    words_in = torch.cat([torch.full((4, 1), START), captions[:, :-1]], dim=1)
    with torch.no_grad():
        scores, h, state = teacher_forced(parts, cell_type, images, words_in)
    picked = scores.gather(2, captions.unsqueeze(2)).squeeze(2)
    best, best_words = scores.max(dim=2)
    for n in range(4):
        for t in range(8):
            if picked[n, t] < best[n, t] - 1e-4 * (1 + best[n, t].abs()):
                pytest.fail(
                    f'CaptioningRNN.sample ("{cell_type}"): word {t} of caption {n} is {int(captions[n, t])}, '
                    f"but given <START> and the words sampled before it the most likely word is "
                    f"{int(best_words[n, t])}",
                    pytrace=False,
                )
    if cell_type == "attn":
        check_tensor("CaptioningRNN.sample attn_weights_all", attn_weights, (4, 8, 4, 4))
        expect(
            attn_weights.device.type == "cpu",
            f"CaptioningRNN.sample attn_weights_all must be on the CPU, got {attn_weights.device}",
        )
        A = state
        prev_h = torch.cat([A.mean(dim=(2, 3)).unsqueeze(1), h[:, :-1]], dim=1)  # (N, T, H), the query of each step
        expected = torch.stack([attention(prev_h[:, t], A)[1] for t in range(8)], dim=1)
        check_close(
            "CaptioningRNN.sample attn_weights_all summed over the grid",
            attn_weights.sum(dim=(2, 3)),
            torch.ones(4, 8),
            atol=1e-5,
        )
        check_close(
            "CaptioningRNN.sample attn_weights_all (the weights used to generate each word)",
            attn_weights,
            expected,
            rtol=1e-4,
            atol=1e-5,
        )


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
