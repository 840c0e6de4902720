"""
The tool asks nothing of a module beyond the contract (tests/CONTRACT.md).

A typical student solution (tests/solutions/typical) hard-codes the 4x4 grid
and squeezes a batch of one away; with it, the tool still captions a single
image greedily and with beam search, and trains on a last minibatch of one.
"""
from pathlib import Path

import pytest
import torch

from _float32 import TINY32, attention_rtol
from helper.captioning.decoding import beam_search, generate_captions, sequence_log_prob
from helper.captioning.steps import make_optimizer, train_step
from helper.common.utils import import_file

TYPICAL = Path(__file__).resolve().parents[2] / "solutions" / "typical" / "rnn_lstm_captioning.py"
WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "b", "c"]


@pytest.fixture(scope="module")
def typical():
    """The typical solution as a module of its own name (the suite's `impl` stays as it is)."""
    return import_file(TYPICAL, "typical_solution", register=False)


@pytest.fixture(scope="module")
def attn_model(typical):
    torch.manual_seed(0)
    model = typical.CaptioningRNN(
        {w: i for i, w in enumerate(WORDS)}, input_dim=400, wordvec_dim=8, hidden_dim=12, cell_type="attn",
        image_encoder_pretrained=False, ignore_index=0,
    )
    return model.eval()


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 112, 112), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_the_typical_solution_breaks_on_a_batch_of_one_by_itself(typical):
    # What the tool must work around: the contract promises batches of two or more only.
    with pytest.raises(Exception):
        typical.dot_product_attention(torch.randn(1, 4), torch.randn(1, 4, 4, 4))


def test_one_image_is_captioned_greedily_and_with_beam_search(attn_model):
    pair = images(2, seed=1)
    with torch.no_grad():
        both, both_attn = generate_captions(attn_model, pair, beam_size=1, max_length=5)
        one, one_attn = generate_captions(attn_model, pair[:1], beam_size=1, max_length=5)
        beam_one, beam_attn = beam_search(attn_model, pair[:1], beam_size=1, max_length=5)
    assert torch.equal(one, both[:1]) and torch.equal(beam_one, both[:1])
    assert one_attn.shape == beam_attn.shape == (1, 5, 4, 4)
    # A batch of one is computed doubled, a batch of two as it is: float32 sums in other kernels.
    (rtol,) = attention_rtol(attn_model, pair[:1])
    torch.testing.assert_close(one_attn, both_attn[:1], rtol=rtol, atol=TINY32)
    torch.testing.assert_close(beam_attn, both_attn[:1], rtol=rtol, atol=TINY32)
    log_prob = sequence_log_prob(attn_model, pair[:1], one)
    assert log_prob.shape == (1,) and torch.isfinite(log_prob).all()


def test_a_minibatch_of_one_trains_as_the_same_image_twice(typical):
    torch.manual_seed(1)
    model = typical.CaptioningRNN(
        {w: i for i, w in enumerate(WORDS)}, input_dim=400, wordvec_dim=8, hidden_dim=12, cell_type="attn",
        image_encoder_pretrained=False, ignore_index=0,
    ).eval()  # eval: batch norm would otherwise see batch statistics of one image
    optimizer, _ = make_optimizer(model, 1e-3)
    captions = torch.tensor([[1, 4, 5, 2, 0]])
    loss = train_step(model, optimizer, images(1, seed=2), captions)
    with torch.no_grad():
        again = model(images(1, seed=2).repeat(2, 1, 1, 1), captions.repeat(2, 1)).item()
    assert loss > 0 and again < loss  # the step ran, and lowered the loss of that image
