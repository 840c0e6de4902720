"""dot_product_attention and the AttentionLSTM module."""

import pytest
import torch

from _grading import (
    FLOAT_DTYPES,
    build,
    call,
    check_close,
    check_gradcheck,
    check_init,
    check_tensor,
    expect,
    forward,
    method,
    named_parameters,
    param,
    randn,
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
    _, weights = call(impl, "dot_product_attention", prev_h, A)
    check_close(
        "dot_product_attention attn_weights summed over the Da x Da grid", weights.sum(dim=(1, 2)), torch.ones(N)
    )
    expect((weights >= 0).all(), "dot_product_attention attn_weights must be non-negative")


def test_dot_product_attention_gradient_matches_numeric(impl):
    prev_h, A = randn(2, 3, seed=4), randn(2, 3, 4, 4, seed=5)
    call(impl, "dot_product_attention", prev_h, A)
    check_gradcheck(
        "dot_product_attention",
        lambda h, A: impl.dot_product_attention(h, A),
        [prev_h.requires_grad_(), A.requires_grad_()],
    )


# ---------------------------------------------------------------------------
# AttentionLSTM
# ---------------------------------------------------------------------------


def attention_lstm_with_bias(impl, D, H, dtype, seed=0):
    torch.manual_seed(seed)
    lstm = build(impl, "AttentionLSTM", D, H).to(dtype)
    with torch.no_grad():
        param(lstm, "b").copy_(randn(4 * H, dtype=dtype, seed=seed + 1, scale=0.5))
    return lstm


def weights_of(lstm):
    return [p.detach() for p in (param(lstm, "Wx"), param(lstm, "Wh"), param(lstm, "Wattn"), param(lstm, "b"))]


def test_attention_lstm_parameters_have_names_shapes_and_initialisation(impl):
    torch.manual_seed(0)
    D, H = 200, 50
    lstm = build(impl, "AttentionLSTM", D, H)
    params = named_parameters(lstm)
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
    expect(len(list(lstm.parameters())) == 4, "AttentionLSTM must have no parameters besides Wx, Wh, Wattn, b")
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
    lstm = attention_lstm_with_bias(impl, D, H, dtype)
    Wx, Wh, Wattn, b = weights_of(lstm)
    x, prev_h = randn(N, D, dtype=dtype, seed=3), randn(N, H, dtype=dtype, seed=4)
    prev_c, attn = randn(N, H, dtype=dtype, seed=5), randn(N, H, dtype=dtype, seed=6)
    with torch.no_grad():
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
    lstm = attention_lstm_with_bias(impl, D, H, dtype, seed=7)
    x, A = randn(N, T, D, dtype=dtype, seed=8), randn(N, H, Da, Da, dtype=dtype, seed=9)
    with torch.no_grad():
        hn = forward(lstm, x, A)
        hn_again = forward(lstm, x, A)
    expected, _ = attention_lstm(x, A, *weights_of(lstm))
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


def test_attention_lstm_gradients_match_numeric(impl):
    N, T, D, H, Da = 2, 2, 2, 2, 4
    lstm = attention_lstm_with_bias(impl, D, H, torch.float64, seed=10)
    x, A = randn(N, T, D, seed=11), randn(N, H, Da, Da, seed=12)
    forward(lstm, x, A)

    def f(x, A, Wx, Wh, Wattn, b):
        return torch.func.functional_call(lstm, {"Wx": Wx, "Wh": Wh, "Wattn": Wattn, "b": b}, (x, A))

    inputs = [x, A, *weights_of(lstm)]
    check_gradcheck("AttentionLSTM.forward", f, [t.clone().requires_grad_() for t in inputs])
