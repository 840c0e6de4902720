"""
The captioning model's test helpers, shared by the graded tests and those beyond the contract.

The model lives in the worker (tests/_grading.py): it is a Remote, and so
are its parts. The tests find the parts by type in the model's layout (never
by attribute name) and recompute the model's results from them here: the
image encoder's c5 features and the recurrent module's hidden states come
from the worker (they are checked against references in their own parts of
the suite); the feature projection, the word embedding and the output
projection are computed here, with torch, from copies of their parameters.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F

from _grading import (
    ENCODER_CHANNELS,
    END,
    START,
    WORD_TO_IDX,
    check_close,
    check_tensor,
    expect,
    forward,
    layout,
    method,
    param,
    probe,
    set_params,
)
from _references import attention
from helper.grading.remote import Remote

CELL_TYPES = ["rnn", "lstm", "attn"]
RECURRENT = {"rnn": "RNN", "lstm": "LSTM", "attn": "AttentionLSTM"}
V = len(WORD_TO_IDX)
# The decoder's parts, by the names of Parts' fields.
DECODER_PARTS = ("embedding", "recurrent", "feature_proj", "output_proj")


@dataclass
class Parts:
    """
    The pieces of a CaptioningRNN in the worker, found by type:

    - encoder: the ImageEncoder; embedding: the WordEmbedding; recurrent: the
      RNN, LSTM or AttentionLSTM; feature_proj: the nn.Linear(400, H);
      output_proj: the nn.Linear(H, V) (each a Remote)
    - paths: each part's qualified path in the model (for set_params on the model)
    - types: each part's type name, as the module named it
    - param_ids: each part's parameter ids in the worker (recursively)
    - entries: the model's whole layout (helper.grading.probes.layout)
    """

    encoder: Remote
    embedding: Remote
    recurrent: Remote
    feature_proj: Remote
    output_proj: Remote
    paths: Dict[str, str] = field(default_factory=dict)
    types: Dict[str, str] = field(default_factory=dict)
    param_ids: Dict[str, List[int]] = field(default_factory=dict)
    entries: List[dict] = field(default_factory=list)

    def decoder_entries(self) -> List[dict]:
        """The layout entries that are not the encoder nor inside it."""
        inside = self.paths["encoder"] + "."
        return [e for e in self.entries if e["path"] != self.paths["encoder"] and not e["path"].startswith(inside)]


def recurrent_kind(entry: dict) -> Optional[str]:
    """
    The recurrent API class ("RNN", "LSTM", "AttentionLSTM") a layout entry is
    an instance of, or None. An AttentionLSTM derived from the module's LSTM
    counts as an AttentionLSTM (the layout names the first API class it is an
    instance of).
    """
    kind = entry["api"]
    if kind == "LSTM" and entry["type"] == "AttentionLSTM":
        return "AttentionLSTM"
    return kind if kind in RECURRENT.values() else None


def _only(found: List[dict], what: str) -> dict:
    """The single entry of found, or a failure saying how many there are."""
    if len(found) != 1:
        pytest.fail(f"CaptioningRNN: expected exactly one {what} in the CaptioningRNN; found {len(found)}",
                    pytrace=False)
    return found[0]


def parts_of(model, cell_type) -> Parts:
    """The model's parts, found by type in its layout (in the worker), or a failure naming what is wrong."""
    entries = layout("CaptioningRNN", model)
    encoder = _only([e for e in entries if e["api"] == "ImageEncoder"], "ImageEncoder")
    # The encoder's own layers (RegNet convolutions, ...) are not decoder pieces.
    inside = encoder["path"] + "."
    decoder = [e for e in entries if e is not encoder and not e["path"].startswith(inside)]
    embedding = _only([e for e in decoder if e["api"] == "WordEmbedding"], "WordEmbedding")
    recurrent = _only([e for e in decoder if recurrent_kind(e)], "recurrent module (RNN, LSTM or AttentionLSTM)")
    if recurrent_kind(recurrent) != RECURRENT[cell_type]:
        pytest.fail(
            f'CaptioningRNN(cell_type="{cell_type}") must hold a {RECURRENT[cell_type]}; found a {recurrent["type"]}',
            pytrace=False,
        )
    # The two nn.Linear layers, told apart by their shapes: (400 -> H) and (H -> V).
    linears = [e for e in decoder if e["api"] == "Linear"]
    pairs = [
        (f, o)
        for f in linears
        for o in linears
        if f is not o and f["in_features"] == ENCODER_CHANNELS and o["out_features"] == V
        and f["out_features"] == o["in_features"]
    ]
    if len(pairs) != 1:
        shapes = [(e["in_features"], e["out_features"]) for e in linears]
        pytest.fail(
            f"CaptioningRNN: expected one nn.Linear({ENCODER_CHANNELS}, H) feature projection and one "
            f"nn.Linear(H, {V}) output projection in the CaptioningRNN; found nn.Linear layers of (in, out) "
            f"sizes {shapes}, which give {len(pairs)} such pairs",
            pytrace=False,
        )
    feature_proj, output_proj = pairs[0]
    found = {"encoder": encoder, "embedding": embedding, "recurrent": recurrent, "feature_proj": feature_proj,
             "output_proj": output_proj}
    return Parts(
        **{name: entry["module"] for name, entry in found.items()},
        paths={name: entry["path"] for name, entry in found.items()},
        types={name: entry["type"] for name, entry in found.items()},
        param_ids={name: entry["params"] for name, entry in found.items()},
        entries=entries,
    )


def weights_of(parts: Parts, name: str) -> Dict[str, torch.Tensor]:
    """Copies of the parameters of one part (its qualified names within the part), as they are now."""
    return probe(f"{parts.types[name]}.parameters", "parameters", getattr(parts, name), True)


def linear(parts: Parts, name: str, x: torch.Tensor) -> torch.Tensor:
    """The nn.Linear part `name` applied to x, computed here from copies of its weight and bias."""
    weights = weights_of(parts, name)
    return F.linear(x, weights["weight"], weights.get("bias"))


def embed(parts: Parts, words: torch.Tensor) -> torch.Tensor:
    """Word vectors (N, T, W) of words (N, T): rows of the WordEmbedding's W_embed, looked up here."""
    return param(parts.embedding, "W_embed")[words]


def initial_state(parts, cell_type, images):
    """
    From the parts: h0 (N, H) = feature projection of the mean of c5 for
    "rnn"/"lstm"; A (N, H, Da, Da) = the projection at every location for
    "attn". c5 comes from the model's encoder (in the worker); the projection
    is computed here.
    """
    c5 = forward(parts.encoder, images)
    check_tensor("ImageEncoder.forward", c5, (images.shape[0], ENCODER_CHANNELS, *c5.shape[2:]))
    if cell_type == "attn":
        return linear(parts, "feature_proj", c5.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return linear(parts, "feature_proj", c5.mean(dim=(2, 3)))


def teacher_forced(parts, cell_type, images, words_in):
    """
    Scores (N, T, V) and hidden states (N, T, H) for input words (N, T), and
    the initial state (h0 or A), computed from the parts: the hidden states by
    the model's recurrent module (in the worker), the rest here.
    """
    state = initial_state(parts, cell_type, images)
    h = forward(parts.recurrent, embed(parts, words_in), state)
    N, T = words_in.shape
    check_tensor(f"{parts.types['recurrent']}.forward", h, (N, T, state.shape[1]))
    return linear(parts, "output_proj", h), h, state


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
    every step, whatever the decoder does. The parameters are set in the
    worker (set_params); returns the model.
    """
    parts = parts_of(model, cell_type)
    output = weights_of(parts, "output_proj")
    bias = torch.zeros_like(output["bias"])
    bias[START] = -1000
    bias[END] = end_bias
    recurrent_bias = param(parts.recurrent, "b")
    out, rec = parts.paths["output_proj"], parts.paths["recurrent"]
    set_params(model, {
        f"{out}.weight": output["weight"] * 20,
        f"{out}.bias": bias,
        f"{rec}.b": torch.randn(recurrent_bias.shape, generator=torch.Generator().manual_seed(9)),
    })
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
    expect(
        ((captions >= 0) & (captions < V)).all(), f"CaptioningRNN.sample returned words outside [0, {V}): {captions}"
    )
    words_in = torch.cat([torch.full((N, 1), START), captions[:, :-1]], dim=1)
    scores, h, state = teacher_forced(parts, cell_type, images, words_in)
    # Hidden states that are all the same (zeros from a module that computes nothing) make every
    # step's scores the same: the check below would then hold for any words, and proves nothing.
    expect(
        (h - h[:1, :1]).abs().max() > 1e-6,
        f"{parts.types['recurrent']}.forward gives the same hidden state for every image and step, so the "
        f'greedy words of CaptioningRNN.sample ("{cell_type}") cannot be checked',
    )
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
