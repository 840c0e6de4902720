"""The vanilla RNN: step and sequence forward, manual backward passes, and the RNN module."""

import pytest
import torch

from _grading import (
    FLOAT_DTYPES,
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
from _references import rnn_loop, rnn_step, torch_rnn
from helper.captioning.gradcheck import compute_numeric_gradient, rel_error

pytestmark = pytest.mark.part("rnn")

# D != H catches a gradient transposed or taken against the wrong weight by
# its shape; D == H catches the same bugs by value.
SIZES = [pytest.param(3, 5, id="D3-H5"), pytest.param(4, 4, id="D4-H4")]


def rnn_inputs(N, T, D, H, dtype=torch.float64, seed=0):
    """x (N, T, D), h0 (N, H), Wx (D, H), Wh (H, H), b (H,), of order one."""
    return (
        randn(N, T, D, dtype=dtype, seed=seed),
        randn(N, H, dtype=dtype, seed=seed + 1),
        randn(D, H, dtype=dtype, seed=seed + 2, scale=0.5),
        randn(H, H, dtype=dtype, seed=seed + 3, scale=0.5),
        randn(H, dtype=dtype, seed=seed + 4, scale=0.5),
    )


# ---------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rnn_step_forward_is_tanh_of_the_two_affine_maps(impl, dtype):
    x, h0, Wx, Wh, b = rnn_inputs(3, 1, 4, 5, dtype=dtype)
    x = x[:, 0]
    next_h, _ = call(impl, "rnn_step_forward", x, h0, Wx, Wh, b)
    check_tensor("rnn_step_forward next_h", next_h, (3, 5), dtype)
    expected = rnn_step(x, h0, Wx, Wh, b)
    check_close("rnn_step_forward next_h", next_h, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rnn_forward_matches_torch_nn_rnn(impl, dtype):
    N, T, D, H = 2, 4, 3, 5
    x, h0, Wx, Wh, b = rnn_inputs(N, T, D, H, dtype=dtype)
    h, _ = call(impl, "rnn_forward", x, h0, Wx, Wh, b)
    check_tensor("rnn_forward h", h, (N, T, H), dtype)
    with torch.no_grad():
        expected, _ = torch_rnn(Wx, Wh, b)(x, h0.unsqueeze(0))
    check_close("rnn_forward h", h, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Backward, by hand
# ---------------------------------------------------------------------------


def gradients_of(label: str, result, names):
    """result, a backward pass's tuple of gradients, after checking that it has one per name."""
    expect(
        isinstance(result, tuple) and len(result) == len(names),
        f"{label} must return a tuple ({', '.join('d' + name for name in names)})",
    )
    return result


def check_numeric_gradients(label: str, grads, inputs, output_of, upstream):
    """
    Compare a backward pass's gradients with numeric ones (float64).

    Inputs:
    - label: the backward function's name
    - grads: its gradients, one per input
    - inputs: dict name -> float64 tensor, the forward pass's inputs
    - output_of: output_of(**inputs) -> the forward pass's output, computed independently
    - upstream: the upstream gradient of that output
    """
    for (name, value), grad in zip(inputs.items(), grads):
        check_tensor(f"{label} d{name}", grad, value.shape, torch.float64)
        numeric = compute_numeric_gradient(lambda v: output_of(**{**inputs, name: v}), value, upstream, h=1e-6)
        error = rel_error(grad, numeric)
        expect(error < 1e-7, f"{label} d{name}: relative error {error:.3g} against the numeric gradient")


@pytest.mark.parametrize("D,H", SIZES)
def test_rnn_step_backward_matches_numeric_gradient(impl, D, H):
    N = 3
    x, prev_h, Wx, Wh, b = rnn_inputs(N, 1, D, H)
    inputs = dict(x=x[:, 0].contiguous(), prev_h=prev_h, Wx=Wx, Wh=Wh, b=b)
    dnext_h = randn(N, H, seed=9)
    _, cache = call(impl, "rnn_step_forward", *inputs.values())
    grads = gradients_of("rnn_step_backward", call(impl, "rnn_step_backward", dnext_h, cache), inputs)
    check_numeric_gradients("rnn_step_backward", grads, inputs, rnn_step, dnext_h)


@pytest.mark.parametrize("D,H", SIZES)
def test_rnn_backward_matches_numeric_gradient(impl, D, H):
    N, T = 2, 3
    inputs = dict(zip(["x", "h0", "Wx", "Wh", "b"], rnn_inputs(N, T, D, H)))
    dh = randn(N, T, H, seed=9)
    _, cache = call(impl, "rnn_forward", *inputs.values())
    grads = gradients_of("rnn_backward", call(impl, "rnn_backward", dh, cache), inputs)
    check_numeric_gradients("rnn_backward", grads, inputs, rnn_loop, dh)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rnn_backward_matches_autograd(impl, dtype):
    N, T, D, H = 3, 5, 4, 6
    inputs = rnn_inputs(N, T, D, H, dtype=dtype, seed=3)
    dh = randn(N, T, H, dtype=dtype, seed=7)
    leaves = [t.clone().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(rnn_loop(*leaves), leaves, dh)

    _, cache = call(impl, "rnn_forward", *inputs)
    names = ["x", "h0", "Wx", "Wh", "b"]
    grads = gradients_of("rnn_backward", call(impl, "rnn_backward", dh, cache), names)
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for name, grad, want in zip(names, grads, expected):
        check_tensor(f"rnn_backward d{name}", grad, want.shape, dtype)
        check_close(f"rnn_backward d{name} (against autograd)", grad, want, **tolerance)


def test_rnn_step_backward_matches_autograd_float32(impl):
    N, D, H = 4, 3, 3
    x, prev_h, Wx, Wh, b = rnn_inputs(N, 1, D, H, dtype=torch.float32, seed=11)
    inputs = dict(x=x[:, 0], prev_h=prev_h, Wx=Wx, Wh=Wh, b=b)
    leaves = [t.clone().requires_grad_() for t in inputs.values()]
    dnext_h = randn(N, H, dtype=torch.float32, seed=12)
    expected = torch.autograd.grad(rnn_step(*leaves), leaves, dnext_h)
    _, cache = call(impl, "rnn_step_forward", *inputs.values())
    grads = gradients_of("rnn_step_backward", call(impl, "rnn_step_backward", dnext_h, cache), inputs)
    for name, grad, want in zip(inputs, grads, expected):
        check_tensor(f"rnn_step_backward d{name}", grad, want.shape, torch.float32)
        check_close(f"rnn_step_backward d{name} (against autograd)", grad, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# The RNN module
# ---------------------------------------------------------------------------


def rnn_weights(D, H, dtype=torch.float64, seed=0):
    """Wx (D, H), Wh (H, H), b (H,) chosen here, a non-zero bias among them, so that the bias is exercised."""
    _, _, Wx, Wh, b = rnn_inputs(1, 1, D, H, dtype=dtype, seed=seed)
    return {"Wx": Wx, "Wh": Wh, "b": b}


def rnn_with_weights(impl, D, H, dtype, seed=0):
    """An RNN of the module under test in dtype, holding the weights rnn_weights chooses (and those weights)."""
    seed_worker(seed)
    rnn = method(build(impl, "RNN", D, H), "to", dtype)
    weights = rnn_weights(D, H, dtype=dtype, seed=seed + 1)
    set_params(rnn, weights)
    return rnn, weights


# Names and shapes alone, and the initialisation: a module that computes nothing passes.
@pytest.mark.unscored
def test_rnn_module_parameters_have_names_shapes_and_initialisation(impl):
    seed_worker(0)
    D, H = 300, 120
    rnn = build(impl, "RNN", D, H)
    params = named_parameters(rnn)
    expect(set(params) == {"Wx", "Wh", "b"}, f"RNN parameters must be Wx, Wh, b; got {sorted(params)}")
    every = probe("RNN.parameters", "parameters", rnn, True)
    expect(len(every) == 3, "RNN must have no parameters besides Wx, Wh, b")
    check_tensor("RNN.Wx", params["Wx"], (D, H), torch.float32)
    check_tensor("RNN.Wh", params["Wh"], (H, H), torch.float32)
    check_tensor("RNN.b", params["b"], (H,), torch.float32)
    check_init("RNN.Wx", params["Wx"], fan_in=D)
    check_init("RNN.Wh", params["Wh"], fan_in=H)
    expect(torch.count_nonzero(params["b"]) == 0, "RNN.b must be initialised to zeros")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_rnn_module_forward_and_step_forward_match_torch(impl, dtype):
    N, T, D, H = 2, 4, 3, 5
    rnn, weights = rnn_with_weights(impl, D, H, dtype, seed=1)
    x, h0 = randn(N, T, D, dtype=dtype, seed=3), randn(N, H, dtype=dtype, seed=4)
    reference = torch_rnn(weights["Wx"], weights["Wh"], weights["b"])
    with torch.no_grad():
        expected, _ = reference(x, h0.unsqueeze(0))
    hn = forward(rnn, x, h0)
    next_h = method(rnn, "step_forward", x[:, 0], h0)
    tolerance = dict(rtol=1e-5, atol=1e-6)
    check_tensor("RNN.forward", hn, (N, T, H), dtype)
    check_close("RNN.forward", hn, expected, **tolerance)
    check_tensor("RNN.step_forward", next_h, (N, H), dtype)
    check_close("RNN.step_forward", next_h, expected[:, 0], **tolerance)


def test_rnn_module_is_differentiable_by_autograd_with_the_reference_gradients(impl):
    N, T, D, H = 2, 3, 3, 2
    rnn, weights = rnn_with_weights(impl, D, H, torch.float64, seed=2)
    x, h0 = randn(N, T, D, seed=5), randn(N, H, seed=6)
    forward(rnn, x, h0)
    dh = randn(N, T, H, seed=7)
    # Autograd through the module's own forward pass (in its worker), against autograd through the reference.
    hn, (dx, dh0), param_grads = vjp("RNN.forward", rnn, [x, h0], wrt=[0, 1], module=rnn, upstream=dh)
    check_close("RNN.forward", hn, rnn_loop(x, h0, **weights), rtol=1e-9, atol=1e-11)
    expected = reference_gradients(rnn_loop, {"x": x, "h0": h0, **weights}, dh)
    check_gradients("RNN.forward", {"x": dx, "h0": dh0, **param_grads}, expected)
