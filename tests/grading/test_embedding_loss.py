"""WordEmbedding and temporal_softmax_loss."""

import pytest
import torch
import torch.nn.functional as F

from _grading import (
    FLOAT_DTYPES,
    api,
    build,
    call,
    check_close,
    check_gradients,
    check_init,
    check_tensor,
    expect,
    forward,
    method,
    named_parameters,
    probe,
    randn,
    reference_gradients,
    seed_worker,
    set_params,
    vjp,
)
from _references import temporal_loss

pytestmark = pytest.mark.part("embedding_loss")

# ---------------------------------------------------------------------------
# WordEmbedding
# ---------------------------------------------------------------------------


def embedding_with_weights(impl, V, W, dtype, seed=0):
    """A WordEmbedding of the module under test in dtype, holding W_embed (V, W) chosen here (and W_embed)."""
    seed_worker(seed)
    embedding = method(build(impl, "WordEmbedding", V, W), "to", dtype)
    W_embed = randn(V, W, dtype=dtype, seed=seed + 1)
    set_params(embedding, {"W_embed": W_embed})
    return embedding, W_embed


# The name, shape and initialisation alone: a module that computes nothing passes.
@pytest.mark.unscored
def test_word_embedding_parameter_has_name_shape_and_initialisation(impl):
    seed_worker(0)
    V, W = 1000, 30
    embedding = build(impl, "WordEmbedding", V, W)
    params = named_parameters(embedding)
    expect(set(params) == {"W_embed"}, f"WordEmbedding's parameter must be W_embed; got {sorted(params)}")
    every = probe("WordEmbedding.parameters", "parameters", embedding, True)
    expect(len(every) == 1, "WordEmbedding must have no parameters besides W_embed")
    check_tensor("WordEmbedding.W_embed", params["W_embed"], (V, W), torch.float32)
    check_init("WordEmbedding.W_embed", params["W_embed"], fan_in=V)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_word_embedding_forward_looks_up_rows(impl, dtype):
    V, W, N, T = 7, 5, 3, 4
    embedding, W_embed = embedding_with_weights(impl, V, W, dtype, seed=1)
    x = torch.tensor([[0, 3, 6, 3], [1, 1, 2, 5], [6, 5, 4, 0]])
    out = forward(embedding, x)
    check_tensor("WordEmbedding.forward", out, (N, T, W), dtype)
    check_close("WordEmbedding.forward", out, F.embedding(x, W_embed), rtol=0, atol=0)


def test_word_embedding_gradient_by_autograd_matches_the_reference(impl):
    V, W = 5, 3
    embedding, W_embed = embedding_with_weights(impl, V, W, torch.float64, seed=2)
    x = torch.tensor([[0, 4, 4], [2, 1, 4]])
    forward(embedding, x)
    upstream = randn(2, 3, W, seed=4)
    # Autograd through the module's own lookup (in its worker), against autograd through F.embedding.
    out, _, param_grads = vjp("WordEmbedding.forward", embedding, [x], module=embedding, upstream=upstream)
    check_close("WordEmbedding.forward", out, F.embedding(x, W_embed), rtol=0, atol=0)
    expected = reference_gradients(lambda W_embed: F.embedding(x, W_embed), {"W_embed": W_embed}, upstream)
    check_gradients("WordEmbedding.forward", param_grads, expected)


# ---------------------------------------------------------------------------
# temporal_softmax_loss
# ---------------------------------------------------------------------------


# An ignore_index that no target equals: the tests of the loss's value pass it,
# so that they also grade a loss that handles only integer ignore_index values
# (ignore_index=None has a test of its own).
ABSENT = -1


def scores_and_targets(N=3, T=4, V=6, dtype=torch.float64, seed=0):
    x = randn(N, T, V, dtype=dtype, seed=seed, scale=2.0)
    y = torch.randint(0, V, (N, T), generator=torch.Generator().manual_seed(seed + 1))
    return x, y


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_temporal_softmax_loss_sums_over_time_and_averages_over_batch(impl, dtype):
    x, y = scores_and_targets(N=3, T=5, dtype=dtype)
    loss = call(impl, "temporal_softmax_loss", x, y, ignore_index=ABSENT)
    check_tensor("temporal_softmax_loss", loss, (), dtype)
    tolerance = dict(rtol=1e-5, atol=1e-6)
    check_close("temporal_softmax_loss", loss, temporal_loss(x, y), **tolerance)
    # The same number, from torch: the cross-entropy summed over all N*T steps, divided by N.
    summed = F.cross_entropy(x.reshape(-1, x.shape[2]), y.reshape(-1), reduction="sum")
    check_close("temporal_softmax_loss (sum over time, mean over batch)", loss, summed / 3, **tolerance)


def test_temporal_softmax_loss_of_a_repeated_batch_is_unchanged_and_of_repeated_time_doubles(impl):
    x, y = scores_and_targets(N=2, T=3)
    loss = call(impl, "temporal_softmax_loss", x, y, ignore_index=ABSENT)
    # Against the reference first: a loss that is always 0 has both properties.
    check_close("temporal_softmax_loss", loss, temporal_loss(x, y))
    loss_more_samples = call(impl, "temporal_softmax_loss", torch.cat([x, x]), torch.cat([y, y]), ignore_index=ABSENT)
    loss_more_steps = call(
        impl, "temporal_softmax_loss", torch.cat([x, x], dim=1), torch.cat([y, y], dim=1), ignore_index=ABSENT
    )
    check_close("temporal_softmax_loss of the batch repeated twice (mean over the batch)", loss_more_samples, loss)
    check_close("temporal_softmax_loss of the steps repeated twice (sum over time)", loss_more_steps, 2 * loss)


def test_temporal_softmax_loss_ignores_targets_equal_to_ignore_index(impl):
    x, y = scores_and_targets(N=3, T=5, V=6)
    y[0, 2:] = 0
    y[2, 4] = 0
    y[1, 0] = 0
    loss = call(impl, "temporal_softmax_loss", x, y, ignore_index=0)
    check_close("temporal_softmax_loss with ignore_index=0", loss, temporal_loss(x, y, ignore_index=0))
    # The ignored steps' scores do not matter.
    x_changed = x.clone()
    x_changed[y == 0] = randn(int((y == 0).sum()), 6, seed=5, scale=10)
    loss_changed = call(impl, "temporal_softmax_loss", x_changed, y, ignore_index=0)
    check_close("temporal_softmax_loss: scores at ignored targets must not matter", loss_changed, loss)
    # A non-zero ignore_index.
    loss3 = call(impl, "temporal_softmax_loss", x, y, ignore_index=3)
    check_close("temporal_softmax_loss with ignore_index=3", loss3, temporal_loss(x, y, ignore_index=3))


def test_temporal_softmax_loss_gradient_by_autograd_matches_the_reference(impl):
    x, y = scores_and_targets(N=2, T=3, V=4)
    y[1, 1] = 0
    loss = call(impl, "temporal_softmax_loss", x, y, ignore_index=0)
    check_tensor("temporal_softmax_loss", loss, (), torch.float64)
    upstream = torch.tensor(1.5, dtype=torch.float64)
    # Autograd through the module's own loss (in its worker), against autograd through the reference.
    loss, (dx,), _ = vjp(
        "temporal_softmax_loss",
        api(impl, "temporal_softmax_loss"),
        [x, y],
        wrt=[0],
        upstream=upstream,
        kwargs={"ignore_index": 0},
    )
    check_close("temporal_softmax_loss", loss, temporal_loss(x, y, ignore_index=0))
    expected = reference_gradients(lambda x: temporal_loss(x, y, ignore_index=0), {"x": x}, upstream)
    check_gradients("temporal_softmax_loss", {"x": dx}, expected)
