"""
Beam search (helper.captioning.decoding) on small random models of every cell type.

The models are untrained, so their captions mean nothing; what is checked is
the search: beam size 1 is greedy `sample`, a beam wide enough to hold every
caption finds the most likely one, beams are sorted and scored by their
log-probabilities, images do not affect each other, and the model is left
as it was. The comparisons with `sample` use the real image encoder; the
other tests give the encoder a cheap stand-in (the RegNet would be most of
their time and is not what they test).

Words are compared exactly; numbers within what float32 allows (below): the
search steps the module's own functions on its own batches, so its numbers
and `sample`'s are two correct float32 computations in another order.
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _float32 import TINY32, attention_rtol, log_prob_atol
from helper.captioning.decoding import (
    beam_search,
    beam_search_beams,
    decoder_step,
    generate_captions,
    initial_state,
    sequence_log_prob,
)
from helper.captioning.parts import model_parts

CELLS = ["rnn", "lstm", "attn"]
WORDS = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(20)]  # V = 24
NULL, START, END = 0, 1, 2
NUM_IMAGES = 6
MAX_LENGTH = 8
IMAGE_SIZE = 112  # the assignment's size, a 4x4 grid of features: the contract covers no other
DA = math.ceil(IMAGE_SIZE / 32)


def random_images(num_images=NUM_IMAGES, seed=1, size=IMAGE_SIZE):
    """uint8 images made of a 4x4 grid of blocks of random colours, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    grid = math.ceil(size / 32)
    blocks = torch.randint(0, 200, (num_images, 3, grid, grid), generator=generator)
    noise = torch.randint(0, 56, (num_images, 3, size, size), generator=generator)
    side = size // grid
    return (blocks.repeat_interleave(side, dim=2).repeat_interleave(side, dim=3) + noise).to(torch.uint8)


def cheap_encoder(images, projection=torch.randn(3, 400, generator=torch.Generator().manual_seed(0))):
    """A stand-in for the RegNet: (N, 3, H, W) -> (N, 400, H / 32, W / 32)."""
    x = images.to(projection.dtype) / 255 if images.dtype == torch.uint8 else images
    grid = (math.ceil(x.shape[2] / 32), math.ceil(x.shape[3] / 32))  # as the RegNet's
    return torch.einsum("nchw,cd->ndhw", F.adaptive_avg_pool2d(x, grid), projection.to(x.dtype))


def greedy(model, images, max_length=MAX_LENGTH):
    """model.sample as (captions, attn_weights or None)."""
    output = model.sample(images, max_length=max_length)
    return output if isinstance(output, tuple) else (output, None)


def end_positions(captions):
    """For each row, the position of its first <END>, or -1."""
    is_end = captions == END
    return [int(row.nonzero()[0]) if row.any() else -1 for row in is_end]


def greedy_end_positions(parts, state, max_length=MAX_LENGTH):
    """Where greedy decoding from state puts the first <END> of each row (-1: nowhere)."""
    words = torch.full((state.h.shape[0],), START)
    captions = []
    for _ in range(max_length):
        scores, state, _ = decoder_step(parts, words, state)
        words = scores.argmax(dim=1)
        captions.append(words)
    return end_positions(torch.stack(captions, dim=1))


def new_model(impl, cell, words=WORDS, seed=0):
    """A small random model in eval mode."""
    torch.manual_seed(seed)
    return impl.CaptioningRNN(
        {w: i for i, w in enumerate(words)},
        input_dim=400,
        wordvec_dim=16,
        hidden_dim=32,
        cell_type=cell,
        image_encoder_pretrained=False,
        ignore_index=0,
    ).eval()


def make_model(impl, cell, words=WORDS, seed=0, real_encoder=False):
    """
    A small random model in eval mode whose captions depend on the image and
    end with <END> at varied steps (some not at all), so that the tests see
    finished and unfinished hypotheses side by side.
    """
    model = new_model(impl, cell, words, seed)
    parts = model_parts(model)
    if not real_encoder:
        parts.encoder.forward = cheap_encoder
    with torch.no_grad():
        # A random encoder gives nearly the same features for every image:
        # scale their differences to order one, and make the word
        # distributions peakier.
        h0 = initial_state(parts, random_images()).h
        parts.feature_proj.weight.div_(h0.std(dim=0).mean())
        parts.output_proj.weight.mul_(3)
        state = initial_state(parts, random_images())
        best_bias, best_variety = 0.0, -1
        for bias in torch.arange(-1.0, 3.01, 0.25).tolist():
            parts.output_proj.bias[END] = bias
            variety = len(set(greedy_end_positions(parts, state)))
            if variety > best_variety:
                best_bias, best_variety = bias, variety
        parts.output_proj.bias[END] = best_bias
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """
    The tensors here are tiny: a second thread only adds synchronisation,
    which costs many times the work itself when other jobs share the CPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(impl):
    """Models with the cheap stand-in encoder."""
    return {cell: make_model(impl, cell) for cell in CELLS}


@pytest.fixture(scope="module")
def real_models(impl):
    """Models with the real (random) RegNet encoder."""
    return {cell: make_model(impl, cell, real_encoder=True) for cell in CELLS}


# ---------------------------------------------------------------------------
# Finding the model's pieces


def test_model_parts_finds_the_pieces_by_type_whatever_their_attribute_names(models):
    model = models["lstm"]
    before = model_parts(model)
    renamed = type(model).__new__(type(model))
    renamed.__dict__.update(model.__dict__)
    # Same modules under other names and in the reverse order.
    renamed._modules = {f"piece{i}": m for i, m in enumerate(reversed(list(model._modules.values())))}
    after = model_parts(renamed)
    for field in ("encoder", "embedding", "recurrent", "feature_proj", "output_proj"):
        assert getattr(after, field) is getattr(before, field), field
    assert after.cell_type == "lstm" and after.vocab_size == len(WORDS)
    assert (after.null, after.start, after.end) == (NULL, START, END)


@pytest.mark.parametrize("cell", CELLS)
def test_model_parts_tells_the_cell_type_from_the_recurrent_module(models, cell):
    assert model_parts(models[cell]).cell_type == cell


def test_model_parts_rejects_a_model_that_is_not_a_captioning_model():
    with pytest.raises(ValueError, match="ImageEncoder"):
        model_parts(nn.Linear(3, 4))


# ---------------------------------------------------------------------------
# Beam size 1 is greedy decoding


@pytest.mark.parametrize("cell", CELLS)
def test_beam_size_one_equals_greedy_sample_up_to_end_then_pads(real_models, cell):
    model = real_models[cell]
    images = random_images()
    sampled, sampled_attn = greedy(model, images)
    output = beam_search(model, images, beam_size=1, max_length=MAX_LENGTH)
    captions, attn = output if cell == "attn" else (output, None)

    if cell == "attn":
        rtols = attention_rtol(model, images)
    positions = end_positions(sampled)
    assert len(set(positions)) >= 2, f"the test model should end captions at varied steps; got {positions}"
    assert captions.dtype == torch.int64 and captions.shape == (NUM_IMAGES, MAX_LENGTH)
    for n, end in enumerate(positions):
        stop = MAX_LENGTH if end < 0 else end + 1  # up to and including <END>
        assert torch.equal(captions[n, :stop], sampled[n, :stop]), f"image {n}"
        assert (captions[n, stop:] == NULL).all(), f"image {n}: no <NULL> padding after <END>"
        if cell == "attn":
            torch.testing.assert_close(attn[n, :stop], sampled_attn[n, :stop], rtol=rtols[n], atol=TINY32)
            assert (attn[n, stop:] == 0).all()
    if cell == "attn":
        assert attn.device.type == "cpu" and attn.shape == sampled_attn.shape


# ---------------------------------------------------------------------------
# The search itself


@pytest.mark.parametrize("cell", CELLS)
def test_a_beam_holding_every_caption_finds_the_most_likely_one(impl, cell):
    # 3 ordinary words, 3 steps: 6**3 = 216 word sequences; a beam of 216
    # never drops a hypothesis, so beam search is exhaustive search.
    words = ["<NULL>", "<START>", "<END>", "x", "y", "z"]
    model = make_model(impl, cell, words=words, seed=3)
    images = random_images(num_images=2, seed=5)
    T = 3
    every = torch.tensor(list(itertools.product(range(len(words)), repeat=T)))  # (216, T)
    best = sequence_log_prob(model, images, every.expand(2, -1, -1)).max(dim=1).values
    beams = beam_search_beams(model, images, beam_size=len(every), max_length=T)
    atol = log_prob_atol(model, T)
    torch.testing.assert_close(beams.log_probs[:, 0], best, rtol=0, atol=atol)
    greedy_log_prob = sequence_log_prob(model, images, greedy(model, images, max_length=T)[0])
    assert (beams.log_probs[:, 0] >= greedy_log_prob - atol).all()


@pytest.mark.parametrize("cell", CELLS)
def test_beams_are_sorted_and_scored_by_their_log_probabilities(models, cell):
    model = models[cell]
    images = random_images()
    beams = beam_search_beams(model, images, beam_size=4, max_length=MAX_LENGTH)
    assert beams.tokens.shape == (NUM_IMAGES, 4, MAX_LENGTH)
    assert (beams.scores[:, :-1] >= beams.scores[:, 1:]).all()
    torch.testing.assert_close(beams.scores, beams.log_probs)  # no length penalty
    rescored = sequence_log_prob(model, images, beams.tokens)
    torch.testing.assert_close(beams.log_probs, rescored, rtol=0, atol=log_prob_atol(model, MAX_LENGTH))
    # The K hypotheses of an image are distinct.
    for n in range(NUM_IMAGES):
        assert len({tuple(row) for row in beams.tokens[n].tolist()}) == 4


@pytest.mark.parametrize("cell", CELLS)
def test_finished_hypotheses_are_padded_with_null_and_counted_to_their_end(models, cell):
    beams = beam_search_beams(models[cell], random_images(), beam_size=3, max_length=MAX_LENGTH)
    tokens = beams.tokens.reshape(-1, MAX_LENGTH)
    lengths = beams.lengths.reshape(-1)
    finished = 0
    for row, length, end in zip(tokens, lengths.tolist(), end_positions(tokens)):
        if end >= 0:
            finished += 1
            assert length == end + 1
            assert (row[end + 1 :] == NULL).all()
        else:
            assert length == MAX_LENGTH
    assert finished > 0, "the test model should finish some hypotheses"
    if cell == "attn":
        attn = beams.attn_weights.reshape(-1, MAX_LENGTH, DA, DA)
        for row, length in zip(attn, lengths.tolist()):
            torch.testing.assert_close(row[:length].sum(dim=(1, 2)), torch.ones(length))
            assert (row[length:] == 0).all()


def test_length_penalty_ranks_by_log_prob_per_length_power(models):
    beams = beam_search_beams(models["lstm"], random_images(), beam_size=4, max_length=MAX_LENGTH, length_penalty=0.7)
    expected = beams.log_probs / beams.lengths.to(beams.log_probs.dtype) ** 0.7
    torch.testing.assert_close(beams.scores, expected)
    assert (beams.scores[:, :-1] >= beams.scores[:, 1:]).all()
    captions = beam_search(models["lstm"], random_images(), beam_size=4, max_length=MAX_LENGTH, length_penalty=0.7)
    assert torch.equal(captions, beams.tokens[:, 0])


@pytest.mark.parametrize("cell", CELLS)
def test_beam_wider_than_the_vocabulary_fills_what_exists(models, cell):
    V = len(WORDS)
    beams = beam_search_beams(models[cell], random_images(), beam_size=V + 6, max_length=1)
    # After one step only V one-word captions exist: each once, then empty slots.
    assert torch.isfinite(beams.log_probs[:, :V]).all()
    assert torch.isneginf(beams.log_probs[:, V:]).all()
    for n in range(NUM_IMAGES):
        assert sorted(beams.tokens[n, :V, 0].tolist()) == list(range(V))
    longer = beam_search(models[cell], random_images(), beam_size=V + 6, max_length=3)
    captions = longer[0] if cell == "attn" else longer
    assert captions.shape == (NUM_IMAGES, 3)


@pytest.mark.parametrize("cell", CELLS)
def test_an_image_gets_the_same_caption_alone_as_in_a_batch(models, cell):
    images = random_images()
    together = beam_search_beams(models[cell], images, beam_size=3, max_length=MAX_LENGTH)
    for n in [0, NUM_IMAGES - 1]:
        alone = beam_search_beams(models[cell], images[n : n + 1], beam_size=3, max_length=MAX_LENGTH)
        assert torch.equal(alone.tokens[0], together.tokens[n])
        torch.testing.assert_close(
            alone.log_probs[0], together.log_probs[n], rtol=0, atol=log_prob_atol(models[cell], MAX_LENGTH)
        )


def test_beam_search_leaves_the_mode_alone_and_records_no_gradients(real_models):
    model = real_models["attn"]
    model.train()
    try:
        captions, attn = beam_search(model, random_images(num_images=2), beam_size=2, max_length=4)
        assert all(m.training for m in model.modules())
        assert not captions.requires_grad and not attn.requires_grad
    finally:
        model.eval()
    beam_search(model, random_images(num_images=2), beam_size=2, max_length=4)
    assert not any(m.training for m in model.modules())


def test_beam_search_runs_in_float64(impl):
    model = new_model(impl, "rnn")
    model_parts(model).encoder.forward = cheap_encoder
    model.double()
    beams = beam_search_beams(model, random_images(num_images=2).double() / 255, beam_size=2, max_length=4)
    assert beams.log_probs.dtype == torch.float64


@pytest.mark.parametrize(
    "options, message",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2.5}, "beam_size"),
        ({"max_length": 0}, "max_length"),
        ({"length_penalty": -1.0}, "length_penalty"),
    ],
)
def test_bad_beam_options_raise_value_error(models, options, message):
    with pytest.raises(ValueError, match=message):
        beam_search(models["rnn"], random_images(num_images=1), **options)


def test_beam_search_rejects_images_that_are_not_a_batch(models):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        beam_search(models["rnn"], random_images(num_images=1)[0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("beam_size", [1, 3])
def test_generate_captions_returns_captions_and_attention_for_every_cell(models, cell, beam_size):
    captions, attn = generate_captions(models[cell], random_images(num_images=2), beam_size=beam_size, max_length=5)
    assert captions.shape == (2, 5) and captions.dtype == torch.int64
    if cell == "attn":
        assert attn.shape == (2, 5, DA, DA)
    else:
        assert attn is None


def test_evaluate_captions_with_a_beam_captions_each_image_by_beam_search(models):
    from helper.captioning.metrics import evaluate_captions

    model = models["attn"]
    images = random_images(num_images=3)
    rows = torch.tensor([0, 1, 1, 2, 0])  # 3 distinct images over 5 caption rows
    captions = torch.tensor([[START, 4, 5, END, NULL]] * 5)
    result = evaluate_captions(model, images[rows], captions, rows * 10, WORDS, batch_size=2, beam_size=3)
    expected, expected_attn = beam_search(model, images, beam_size=3, max_length=captions.shape[1] - 1)
    assert result["image_ids"] == [0, 10, 20]
    assert torch.equal(result["captions"], expected)
    # Batches of 2 there, of 3 here: the same numbers in other kernels.
    rtols = attention_rtol(model, images)
    for n, rtol in enumerate(rtols):
        torch.testing.assert_close(result["attn_weights"][n], expected_attn[n], rtol=rtol, atol=TINY32)
    assert set(result["metrics"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
