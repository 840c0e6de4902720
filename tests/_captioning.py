"""The captioning model's test helpers, shared by the graded tests and those beyond the contract."""

import pytest
import torch

from _grading import END, START, WORD_TO_IDX, check_close, check_tensor, expect, forward, method, param
from _references import attention
from helper.captioning.parts import model_parts

CELL_TYPES = ["rnn", "lstm", "attn"]
RECURRENT = {"rnn": "RNN", "lstm": "LSTM", "attn": "AttentionLSTM"}
V = len(WORD_TO_IDX)


def parts_of(model, cell_type):
    """The model's parts, found by type (helper.captioning.parts.model_parts), or a failure naming what is wrong."""
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


def for_sampling(model, cell_type, end_bias=-1000.0):
    """
    Make model's greedy words depend on the decoder: an output layer with
    large weights and no bias but for <START> (never picked) and <END>
    (end_bias), and a non-zero recurrent bias (so that a sample() that steps
    the decoder without it, or without a part of it, gives other words).
    With small random weights the bias alone would pick the same word at
    every step, whatever the decoder does.
    """
    parts = parts_of(model, cell_type)
    with torch.no_grad():
        parts.output_proj.weight.mul_(20)
        parts.output_proj.bias.zero_()
        parts.output_proj.bias[START] = -1000
        parts.output_proj.bias[END] = end_bias
        recurrent_bias = param(parts.recurrent, "b")
        recurrent_bias.copy_(torch.randn(recurrent_bias.shape, generator=torch.Generator().manual_seed(9)))
    return model


def check_greedy(model, cell_type, images, captions, attn_weights):
    """
    Fail unless every word of captions, up to and including its caption's
    first <END>, is the most likely word given <START> and the words before
    it (what follows a caption's <END> is the solution's choice), and for
    "attn" unless attn_weights are the weights of each of those steps.
    """
    parts = parts_of(model, cell_type)
    N, T = captions.shape
    words_in = torch.cat([torch.full((N, 1), START), captions[:, :-1]], dim=1)
    with torch.no_grad():
        scores, h, state = teacher_forced(parts, cell_type, images, words_in)
    picked = scores.gather(2, captions.unsqueeze(2)).squeeze(2)
    best, best_words = scores.max(dim=2)
    for n in range(N):
        for t in range(T):
            if picked[n, t] < best[n, t] - 1e-4 * (1 + best[n, t].abs()):
                pytest.fail(
                    f'CaptioningRNN.sample ("{cell_type}"): word {t} of caption {n} is {int(captions[n, t])}, '
                    f"but given <START> and the words sampled before it the most likely word is "
                    f"{int(best_words[n, t])}",
                    pytrace=False,
                )
            if captions[n, t] == END:
                break
    if cell_type == "attn":
        A = state
        check_tensor("CaptioningRNN.sample attn_weights_all", attn_weights, (N, T, *A.shape[2:]))
        expect(
            attn_weights.device.type == "cpu",
            f"CaptioningRNN.sample attn_weights_all must be on the CPU, got {attn_weights.device}",
        )
        prev_h = torch.cat([A.mean(dim=(2, 3)).unsqueeze(1), h[:, :-1]], dim=1)  # (N, T, H), the query of each step
        expected = torch.stack([attention(prev_h[:, t], A)[1] for t in range(T)], dim=1)
        ended = (captions == END).long().cumsum(dim=1) - (captions == END).long() > 0  # steps after an <END>
        check_close(
            "CaptioningRNN.sample attn_weights_all (the weights used to generate each word)",
            attn_weights.masked_fill(ended.unsqueeze(2).unsqueeze(3), 0),
            expected.masked_fill(ended.unsqueeze(2).unsqueeze(3), 0),
            rtol=1e-4,
            atol=1e-5,
        )
