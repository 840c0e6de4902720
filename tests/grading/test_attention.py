"""dot_product_attention and the AttentionLSTM module."""

import math

import pytest
import torch

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
    probe,
    randn,
    reference_gradients,
    seed_worker,
    set_params,
    vjp,
)
from _references import attention, attention_lstm, lstm_step

pytestmark = pytest.mark.part("attention")

# ---------------------------------------------------------------------------
# dot_product_attention
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dot_product_attention_matches_direct_softmax_computation(impl, dtype):
    # H = 9: the 1/sqrt(H) = 1/3 scale changes the weights visibly.
    N, H, Da = 3, 9, 4
    prev_h, A = randn(N, H, dtype=dtype, seed=0), randn(N, H, Da, Da, dtype=dtype, seed=1)
    result = call(impl, "dot_product_attention", prev_h, A)
    if not isinstance(result, tuple) or len(result) != 2:
        pytest.fail("dot_product_attention must return a tuple (attn, attn_weights)", pytrace=False)
    attn, weights = result
    expected_attn, expected_weights = attention(prev_h, A)
    check_tensor("dot_product_attention attn", attn, (N, H), dtype)
    check_tensor("dot_product_attention attn_weights", weights, (N, Da, Da), dtype)
    tolerance = dict(rtol=1e-5, atol=1e-6)
    check_close(
        "dot_product_attention attn_weights (softmax of prev_h . A / sqrt(H))", weights, expected_weights, **tolerance
    )
    check_close("dot_product_attention attn", attn, expected_attn, **tolerance)


def test_dot_product_attention_weights_sum_to_one_over_locations(impl):
    N, H, Da = 2, 4, 4
    prev_h, A = randn(N, H, seed=2, scale=3), randn(N, H, Da, Da, seed=3)
    result = call(impl, "dot_product_attention", prev_h, A)
    if not isinstance(result, tuple) or len(result) != 2:
        pytest.fail("dot_product_attention must return a tuple (attn, attn_weights)", pytrace=False)
    _, weights = result
    check_tensor("dot_product_attention attn_weights", weights, (N, Da, Da))
    check_close(
        "dot_product_attention attn_weights summed over the Da x Da grid", weights.sum(dim=(1, 2)), torch.ones(N)
    )
    expect((weights >= 0).all(), "dot_product_attention attn_weights must be non-negative")


@pytest.mark.parametrize("output_index,output_name", [(0, "attn"), (1, "attn_weights")], ids=["attn", "attn_weights"])
def test_dot_product_attention_gradients_match_the_reference(impl, output_index, output_name):
    N, H, Da = 2, 3, 4
    prev_h, A = randn(N, H, seed=4), randn(N, H, Da, Da, seed=5)
    upstream = randn(N, H, seed=6) if output_index == 0 else randn(N, Da, Da, seed=7)
    result = call(impl, "dot_product_attention", prev_h, A)
    if not isinstance(result, tuple) or len(result) != 2:
        pytest.fail("dot_product_attention must return a tuple (attn, attn_weights)", pytrace=False)
    label = f"dot_product_attention {output_name}"
    check_tensor(label, result[output_index], upstream.shape, torch.float64)
    _, grads, _ = vjp(
        label, api(impl, "dot_product_attention"), [prev_h, A], wrt=[0, 1], upstream=upstream,
        output_index=output_index,
    )
    expected = reference_gradients(
        lambda prev_h, A: attention(prev_h, A)[output_index], {"prev_h": prev_h, "A": A}, upstream
    )
    check_gradients(label, {"prev_h": grads[0], "A": grads[1]}, expected)


# ---------------------------------------------------------------------------
# AttentionLSTM
# ---------------------------------------------------------------------------


def attention_lstm_with_weights(impl, D, H, dtype, seed=0):
    """
    An AttentionLSTM of the module under test (a Remote, converted to dtype)
    holding weights chosen here, a non-zero bias included so that the bias is
    exercised. Returns (lstm, [Wx, Wh, Wattn, b]) for the reference.
    """
    seed_worker(seed)
    lstm = method(build(impl, "AttentionLSTM", D, H), "to", dtype)
    weights = [
        randn(D, 4 * H, dtype=dtype, seed=seed + 1, scale=1 / math.sqrt(D)),
        randn(H, 4 * H, dtype=dtype, seed=seed + 2, scale=1 / math.sqrt(H)),
        randn(H, 4 * H, dtype=dtype, seed=seed + 3, scale=1 / math.sqrt(H)),
        randn(4 * H, dtype=dtype, seed=seed + 4, scale=0.5),
    ]
    set_params(lstm, dict(zip(["Wx", "Wh", "Wattn", "b"], weights)))
    return lstm, weights


# A module whose functions compute nothing has parameters of the right names,
# shapes and initialisation too: this check is reported, for 0 points.
@pytest.mark.unscored
def test_attention_lstm_parameters_have_names_shapes_and_initialisation(impl):
    seed_worker(0)
    D, H = 200, 50
    lstm = build(impl, "AttentionLSTM", D, H)
    params = probe("AttentionLSTM.parameters", "parameters", lstm, True)
    expect(
        set(params)
        == {
            "Wx",
            "Wh",
            "Wattn",
            "b",
        },
        f"AttentionLSTM parameters must be Wx, Wh, Wattn, b; got {sorted(params)}",
    )
    expect(len(params) == 4, "AttentionLSTM must have no parameters besides Wx, Wh, Wattn, b")
    check_tensor("AttentionLSTM.Wx", params["Wx"], (D, 4 * H), torch.float32)
    check_tensor("AttentionLSTM.Wh", params["Wh"], (H, 4 * H), torch.float32)
    check_tensor("AttentionLSTM.Wattn", params["Wattn"], (H, 4 * H), torch.float32)
    check_tensor("AttentionLSTM.b", params["b"], (4 * H,), torch.float32)
    check_init("AttentionLSTM.Wx", params["Wx"], fan_in=D)
    check_init("AttentionLSTM.Wh", params["Wh"], fan_in=H)
    check_init("AttentionLSTM.Wattn", params["Wattn"], fan_in=H)
    expect(torch.count_nonzero(params["b"]) == 0, "AttentionLSTM.b must be initialised to zeros")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_attention_lstm_step_forward_adds_attention_to_the_gates(impl, dtype):
    N, D, H = 3, 4, 5
    lstm, (Wx, Wh, Wattn, b) = attention_lstm_with_weights(impl, D, H, dtype)
    x, prev_h = randn(N, D, dtype=dtype, seed=3), randn(N, H, dtype=dtype, seed=4)
    prev_c, attn = randn(N, H, dtype=dtype, seed=5), randn(N, H, dtype=dtype, seed=6)
    result = method(lstm, "step_forward", x, prev_h, prev_c, attn)
    if not isinstance(result, tuple) or len(result) != 2:
        pytest.fail("AttentionLSTM.step_forward must return a tuple (next_h, next_c)", pytrace=False)
    next_h, next_c = result
    expected_h, expected_c = lstm_step(x @ Wx + prev_h @ Wh + attn @ Wattn + b, prev_c)
    tolerance = dict(rtol=1e-5, atol=1e-6)
    check_tensor("AttentionLSTM.step_forward next_h", next_h, (N, H), dtype)
    check_tensor("AttentionLSTM.step_forward next_c", next_c, (N, H), dtype)
    check_close("AttentionLSTM.step_forward next_c", next_c, expected_c, **tolerance)
    check_close("AttentionLSTM.step_forward next_h", next_h, expected_h, **tolerance)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_attention_lstm_forward_matches_reference_loop(impl, dtype):
    N, T, D, H, Da = 2, 4, 3, 4, 4
    lstm, weights = attention_lstm_with_weights(impl, D, H, dtype, seed=7)
    x, A = randn(N, T, D, dtype=dtype, seed=8), randn(N, H, Da, Da, dtype=dtype, seed=9)
    hn = forward(lstm, x, A)
    hn_again = forward(lstm, x, A)
    expected, _ = attention_lstm(x, A, *weights)
    check_tensor("AttentionLSTM.forward", hn, (N, T, H), dtype)
    check_close(
        "AttentionLSTM.forward (h0 = c0 = mean of A, attention from the previous h)", hn, expected, rtol=1e-5, atol=1e-6
    )
    check_close(
        "AttentionLSTM.forward called a second time (no state kept between calls)",
        hn_again,
        expected,
        rtol=1e-5,
        atol=1e-6,
    )


def test_attention_lstm_gradients_match_the_reference(impl):
    N, T, D, H, Da = 2, 3, 2, 3, 4
    lstm, weights = attention_lstm_with_weights(impl, D, H, torch.float64, seed=10)
    x, A = randn(N, T, D, seed=11), randn(N, H, Da, Da, seed=12)
    upstream = randn(N, T, H, seed=13)
    check_tensor("AttentionLSTM.forward", forward(lstm, x, A), (N, T, H), torch.float64)
    _, grads, param_grads = vjp("AttentionLSTM.forward", lstm, [x, A], wrt=[0, 1], module=lstm, upstream=upstream)
    names = ["Wx", "Wh", "Wattn", "b"]
    expected = reference_gradients(
        lambda x, A, Wx, Wh, Wattn, b: attention_lstm(x, A, Wx, Wh, Wattn, b)[0],
        {"x": x, "A": A, **dict(zip(names, weights))},
        upstream,
    )
    check_gradients("AttentionLSTM.forward", {"x": grads[0], "A": grads[1], **param_grads}, expected)
