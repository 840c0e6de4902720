"""The LSTM module, against torch.nn.LSTM with its gates reordered to i, f, o, g."""

import math

import pytest
import torch
from torch import nn

from _grading import (
    FLOAT_DTYPES,
    build,
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
from _references import ifog_to_torch, lstm_step, torch_lstm

pytestmark = pytest.mark.part("lstm")


def lstm_with_bias(impl, D, H, dtype, seed=0):
    """
    An LSTM of the module under test in dtype, holding weights chosen here
    (randn / sqrt of fan-in, and a non-zero bias, so that the bias is
    exercised), and those weights {"Wx", "Wh", "b"}.
    """
    seed_worker(seed)
    lstm = method(build(impl, "LSTM", D, H), "to", dtype)
    weights = {
        "Wx": randn(D, 4 * H, dtype=dtype, seed=seed + 1, scale=1 / math.sqrt(D)),
        "Wh": randn(H, 4 * H, dtype=dtype, seed=seed + 2, scale=1 / math.sqrt(H)),
        "b": randn(4 * H, dtype=dtype, seed=seed + 3, scale=0.5),
    }
    set_params(lstm, weights)
    return lstm, weights


def reference_of(weights) -> nn.LSTM:
    return torch_lstm(weights["Wx"], weights["Wh"], weights["b"])


def lstm_loop(x, h0, Wx, Wh, b):
    """The LSTM over a sequence from c0 = 0, written as a plain loop (differentiable by autograd): h (N, T, H)."""
    h, c, hs = h0, torch.zeros_like(h0), []
    for t in range(x.shape[1]):
        h, c = lstm_step(x[:, t] @ Wx + h @ Wh + b, c)
        hs.append(h)
    return torch.stack(hs, dim=1)


# Names and shapes alone, and the initialisation: a module that computes nothing passes.
@pytest.mark.unscored
def test_lstm_parameters_have_names_shapes_and_initialisation(impl):
    seed_worker(0)
    D, H = 200, 50
    lstm = build(impl, "LSTM", D, H)
    params = named_parameters(lstm)
    expect(set(params) == {"Wx", "Wh", "b"}, f"LSTM parameters must be Wx, Wh, b; got {sorted(params)}")
    every = probe("LSTM.parameters", "parameters", lstm, True)
    expect(len(every) == 3, "LSTM must have no parameters besides Wx, Wh, b")
    check_tensor("LSTM.Wx", params["Wx"], (D, 4 * H), torch.float32)
    check_tensor("LSTM.Wh", params["Wh"], (H, 4 * H), torch.float32)
    check_tensor("LSTM.b", params["b"], (4 * H,), torch.float32)
    check_init("LSTM.Wx", params["Wx"], fan_in=D)
    check_init("LSTM.Wh", params["Wh"], fan_in=H)
    expect(torch.count_nonzero(params["b"]) == 0, "LSTM.b must be initialised to zeros")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_lstm_step_forward_matches_torch_lstm_cell(impl, dtype):
    N, D, H = 3, 4, 5
    lstm, weights = lstm_with_bias(impl, D, H, dtype)
    x, prev_h = randn(N, D, dtype=dtype, seed=3), randn(N, H, dtype=dtype, seed=4)
    prev_c = randn(N, H, dtype=dtype, seed=5)
    cell = nn.LSTMCell(D, H).to(dtype)
    with torch.no_grad():
        cell.weight_ih.copy_(ifog_to_torch(weights["Wx"]).t())
        cell.weight_hh.copy_(ifog_to_torch(weights["Wh"]).t())
        cell.bias_ih.copy_(ifog_to_torch(weights["b"]))
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
    lstm, weights = lstm_with_bias(impl, D, H, dtype, seed=6)
    x, h0 = randn(N, T, D, dtype=dtype, seed=7), randn(N, H, dtype=dtype, seed=8)
    with torch.no_grad():
        expected, _ = reference_of(weights)(x, (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0)))
    hn = forward(lstm, x, h0)
    hn_again = forward(lstm, x, h0)
    check_tensor("LSTM.forward", hn, (N, T, H), dtype)
    check_close("LSTM.forward (against torch.nn.LSTM, c0 = 0)", hn, expected, rtol=1e-5, atol=1e-6)
    check_close(
        "LSTM.forward called a second time (no state kept between calls)", hn_again, expected, rtol=1e-5, atol=1e-6
    )


def test_lstm_forward_and_step_forward_agree(impl):
    N, T, D, H = 2, 4, 3, 3
    lstm, weights = lstm_with_bias(impl, D, H, torch.float64, seed=9)
    x, h0 = randn(N, T, D, seed=10), randn(N, H, seed=11)
    with torch.no_grad():
        expected, _ = reference_of(weights)(x, (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0)))
    hn = forward(lstm, x, h0)
    check_tensor("LSTM.forward", hn, (N, T, H), torch.float64)
    h, c = h0, torch.zeros_like(h0)
    for t in range(T):
        result = method(lstm, "step_forward", x[:, t], h, c)
        if not isinstance(result, tuple) or len(result) != 2:
            pytest.fail("LSTM.step_forward must return a tuple (next_h, next_c)", pytrace=False)
        h, c = result
        check_close(
            f"LSTM.forward at step {t} (against step_forward from c0 = 0)", hn[:, t], h, rtol=1e-9, atol=1e-12
        )
        # Against the reference too: modules that compute nothing agree with themselves.
        check_close(
            f"LSTM.step_forward at step {t} from c0 = 0 (against torch.nn.LSTM)", h, expected[:, t], rtol=1e-9,
            atol=1e-12,
        )


def test_lstm_gradients_by_autograd_match_the_reference(impl):
    N, T, D, H = 2, 3, 3, 2
    lstm, weights = lstm_with_bias(impl, D, H, torch.float64, seed=12)
    x, h0 = randn(N, T, D, seed=13), randn(N, H, seed=14)
    forward(lstm, x, h0)
    dh = randn(N, T, H, seed=15)
    # Autograd through the module's own forward pass (in its worker), against autograd through the reference.
    hn, (dx, dh0), param_grads = vjp("LSTM.forward", lstm, [x, h0], wrt=[0, 1], module=lstm, upstream=dh)
    with torch.no_grad():
        expected_h, _ = reference_of(weights)(x, (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0)))
    check_close("LSTM.forward (against torch.nn.LSTM, c0 = 0)", hn, expected_h, rtol=1e-9, atol=1e-11)
    expected = reference_gradients(lstm_loop, {"x": x, "h0": h0, **weights}, dh)
    check_gradients("LSTM.forward", {"x": dx, "h0": dh0, **param_grads}, expected)
