"""The LSTM module, against torch.nn.LSTM with its gates reordered to i, f, o, g."""

import pytest
import torch
from torch import nn

from _grading import (
    FLOAT_DTYPES,
    build,
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
from _references import ifog_to_torch, torch_lstm

pytestmark = pytest.mark.part("lstm")


def lstm_with_bias(impl, D, H, dtype, seed=0):
    """An LSTM of the module under test with a non-zero bias, so that the bias is exercised."""
    torch.manual_seed(seed)
    lstm = build(impl, "LSTM", D, H).to(dtype)
    with torch.no_grad():
        param(lstm, "b").copy_(randn(4 * H, dtype=dtype, seed=seed + 1, scale=0.5))
    return lstm


def reference_of(lstm) -> nn.LSTM:
    return torch_lstm(param(lstm, "Wx").detach(), param(lstm, "Wh").detach(), param(lstm, "b").detach())


def test_lstm_parameters_have_names_shapes_and_initialisation(impl):
    torch.manual_seed(0)
    D, H = 200, 50
    lstm = build(impl, "LSTM", D, H)
    params = named_parameters(lstm)
    expect(set(params) == {"Wx", "Wh", "b"}, f"LSTM parameters must be Wx, Wh, b; got {sorted(params)}")
    expect(len(list(lstm.parameters())) == 3, "LSTM must have no parameters besides Wx, Wh, b")
    check_tensor("LSTM.Wx", params["Wx"], (D, 4 * H), torch.float32)
    check_tensor("LSTM.Wh", params["Wh"], (H, 4 * H), torch.float32)
    check_tensor("LSTM.b", params["b"], (4 * H,), torch.float32)
    check_init("LSTM.Wx", params["Wx"], fan_in=D)
    check_init("LSTM.Wh", params["Wh"], fan_in=H)
    expect(torch.count_nonzero(params["b"]) == 0, "LSTM.b must be initialised to zeros")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_lstm_step_forward_matches_torch_lstm_cell(impl, dtype):
    N, D, H = 3, 4, 5
    lstm = lstm_with_bias(impl, D, H, dtype)
    x, prev_h = randn(N, D, dtype=dtype, seed=3), randn(N, H, dtype=dtype, seed=4)
    prev_c = randn(N, H, dtype=dtype, seed=5)
    cell = nn.LSTMCell(D, H).to(dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(ifog_to_torch(param(lstm, "Wx")).t())
        cell.weight_hh.copy_(ifog_to_torch(param(lstm, "Wh")).t())
        cell.bias_ih.copy_(ifog_to_torch(param(lstm, "b")))
        cell.bias_hh.zero_()
        expected_h, expected_c = cell(x, (prev_h, prev_c))
        result = method(lstm, "step_forward", x, prev_h, prev_c)
    if not isinstance(result, tuple) or len(result) != 2:
        pytest.fail("LSTM.step_forward must return a tuple (next_h, next_c)", pytrace=False)
    next_h, next_c = result
    tolerance = dict(rtol=1e-5, atol=1e-6)
    check_tensor("LSTM.step_forward next_h", next_h, (N, H), dtype)
    check_tensor("LSTM.step_forward next_c", next_c, (N, H), dtype)
    check_close("LSTM.step_forward next_c (gate order i, f, o, g)", next_c, expected_c, **tolerance)
    check_close("LSTM.step_forward next_h (gate order i, f, o, g)", next_h, expected_h, **tolerance)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_lstm_forward_matches_torch_nn_lstm_with_zero_initial_cell(impl, dtype):
    N, T, D, H = 2, 5, 3, 4
    lstm = lstm_with_bias(impl, D, H, dtype, seed=6)
    x, h0 = randn(N, T, D, dtype=dtype, seed=7), randn(N, H, dtype=dtype, seed=8)
    with torch.no_grad():
        expected, _ = reference_of(lstm)(x, (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0)))
        hn = forward(lstm, x, h0)
        hn_again = forward(lstm, x, h0)
    check_tensor("LSTM.forward", hn, (N, T, H), dtype)
    check_close("LSTM.forward (against torch.nn.LSTM, c0 = 0)", hn, expected, rtol=1e-5, atol=1e-6)
    check_close(
        "LSTM.forward called a second time (no state kept between calls)", hn_again, expected, rtol=1e-5, atol=1e-6
    )


def test_lstm_forward_and_step_forward_agree(impl):
    N, T, D, H = 2, 4, 3, 3
    lstm = lstm_with_bias(impl, D, H, torch.float64, seed=9)
    x, h0 = randn(N, T, D, seed=10), randn(N, H, seed=11)
    with torch.no_grad():
        hn = forward(lstm, x, h0)
        h, c = h0, torch.zeros_like(h0)
        for t in range(T):
            h, c = method(lstm, "step_forward", x[:, t], h, c)
            check_close(
                f"LSTM.forward at step {t} (against step_forward from c0 = 0)", hn[:, t], h, rtol=1e-9, atol=1e-12
            )


def test_lstm_gradients_match_numeric(impl):
    N, T, D, H = 2, 3, 3, 2
    lstm = lstm_with_bias(impl, D, H, torch.float64, seed=12)
    x, h0 = randn(N, T, D, seed=13), randn(N, H, seed=14)
    forward(lstm, x, h0)

    def f(x, h0, Wx, Wh, b):
        return torch.func.functional_call(lstm, {"Wx": Wx, "Wh": Wh, "b": b}, (x, h0))

    params = [param(lstm, "Wx"), param(lstm, "Wh"), param(lstm, "b")]
    check_gradcheck("LSTM.forward", f, [t.detach().clone().requires_grad_() for t in [x, h0, *params]])
