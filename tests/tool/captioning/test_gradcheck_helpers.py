"""The helpers the notebook and the grader rely on: numeric gradients, rel_error, reset_seed, decode_captions."""

import random

import numpy as np
import pytest
import torch

from helper.captioning.decoding import decode_captions
from helper.captioning.gradcheck import compute_numeric_gradient, rel_error
from helper.common.utils import reset_seed


def test_numeric_gradient_of_a_sum_of_squares_is_twice_x():
    x = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.5]], dtype=torch.float64)
    grad = compute_numeric_gradient(lambda v: (v**2).sum(), x, h=1e-6)
    assert torch.allclose(grad, 2 * x, atol=1e-8)


def test_numeric_gradient_weights_a_tensor_output_by_dLdf_and_restores_x():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    original = x.clone()
    W = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dLdf = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grad = compute_numeric_gradient(lambda v: torch.tanh(v @ W), x, dLdf, h=1e-6)
    leaf = x.clone().requires_grad_()
    expected = torch.autograd.grad(torch.tanh(leaf @ W), leaf, dLdf)[0]
    assert torch.equal(x, original), "compute_numeric_gradient must restore x"
    assert rel_error(grad, expected) < 1e-8


def test_numeric_gradient_default_upstream_gradient_is_ones():
    x = torch.tensor([0.3, -0.7], dtype=torch.float64)
    grad = compute_numeric_gradient(lambda v: torch.stack([v[0] * v[1], v[0] + v[1]]), x, h=1e-6)
    assert torch.allclose(grad, torch.tensor([x[1] + 1, x[0] + 1], dtype=torch.float64), atol=1e-8)


def test_numeric_gradient_rejects_an_upstream_gradient_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        compute_numeric_gradient(
            lambda v: v * 2, torch.zeros(3, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        )


def test_rel_error_is_zero_for_equal_tensors_and_the_relative_difference_otherwise():
    x = torch.tensor([1.0, -2.0, 4.0])
    assert rel_error(x, x.clone()) == 0
    y = x.clone()
    y[2] = 5.0
    # max |x - y| / max(|x| + |y|) = 1 / 9
    assert rel_error(x, y) == pytest.approx(1 / 9)
    assert rel_error(torch.zeros(2), torch.zeros(2)) == 0


def test_reset_seed_makes_python_numpy_and_torch_repeat():
    reset_seed(123)
    first = (random.random(), np.random.rand(), torch.rand(3))
    reset_seed(123)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
    reset_seed(124)
    assert random.random() != first[0]


IDX_TO_WORD = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "sits"]


def test_decode_captions_drops_null_and_stops_after_end():
    captions = torch.tensor([[1, 4, 5, 0, 6, 2, 5, 5], [4, 5, 6, 0, 0, 0, 0, 0]])
    assert decode_captions(captions, IDX_TO_WORD) == ["<START> a cat sits <END>", "a cat sits"]


def test_decode_captions_of_one_caption_is_a_string_and_accepts_a_dict():
    idx_to_word = dict(enumerate(IDX_TO_WORD))
    assert decode_captions(torch.tensor([4, 5, 2, 6]), idx_to_word) == "a cat <END>"


def test_decode_captions_rejects_three_dimensional_input():
    with pytest.raises(ValueError, match="shape"):
        decode_captions(torch.zeros(2, 3, 4, dtype=torch.long), IDX_TO_WORD)
