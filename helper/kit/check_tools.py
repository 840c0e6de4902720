"""
What the public checks of the self-check (helper/kit/selfcheck.py) are made of.

Students see this file, so it holds no implementation of a graded function.
Each check compares the student's code with what a student may see anyway:
PyTorch's own layers (nn.RNN, nn.LSTM), numeric gradients, values worked out
by hand, properties (weights sum to one, log V per word for equal scores),
memorising a few captions, and fixed values of our solution on fixed inputs
(helper/kit/public_expected.py, like the "expected_next_h" of the standard
assignment). The grade has more checks than these.

A check is a function of the module; it returns nothing when the code
passes, and raises NotWritten (the code raised NotImplementedError or
returned None), CheckFailed (a wrong value, with what was expected) or any
other exception (the code crashed).
"""
import contextlib
import io
import math
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from helper.captioning.gradcheck import compute_numeric_gradient, rel_error

# Fixed values recorded from the reference solution; RECORDING is filled instead when recording them.
try:
    from helper.kit.public_expected import EXPECTED
except ImportError:  # before the first recording
    EXPECTED = {}
RECORDING: Dict[str, list] = {}
RECORD = False


class NotWritten(Exception):
    """The code under check is not written yet (NotImplementedError, or it returned None)."""


class CheckFailed(Exception):
    """The code ran but gave a wrong result; the message says what was expected."""


def values(*shape, start: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Fixed float64 inputs of the given shape, the same on every machine (no random generator)."""
    n = math.prod(shape)
    return scale * torch.sin(torch.arange(n, dtype=torch.float64) * 0.731 + start).view(*shape)


def call(label: str, function: Callable, *args, **kwargs):
    """function(*args, **kwargs); NotWritten when it raises NotImplementedError or returns None (or Nones)."""
    try:
        result = function(*args, **kwargs)
    except NotImplementedError as error:
        raise NotWritten(str(error) or f"{label} raises NotImplementedError") from None
    if result is None or (isinstance(result, tuple) and any(item is None for item in result)):
        raise NotWritten(f"{label} returned None: not written yet?")
    return result


def expect_tensor(label: str, value, shape: Tuple[int, ...]) -> torch.Tensor:
    """value, when it is a tensor of the shape; CheckFailed otherwise."""
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{label}: expected a tensor of shape {shape}, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise CheckFailed(f"{label}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
    return value


def expect_close(label: str, actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-8) -> None:
    """CheckFailed unless the relative error of actual against expected is below tolerance."""
    expect_tensor(label, actual, tuple(expected.shape))
    error = rel_error(actual.detach().to(torch.float64).cpu(), expected.to(torch.float64))
    if not error < tolerance:  # also catches NaN
        raise CheckFailed(f"{label}: relative error {error:.2e}, expected below {tolerance:.0e}")


def expect_fixed(key: str, actual: torch.Tensor, tolerance: float = 1e-8) -> None:
    """Compare with the fixed value stored under key (or store it, when recording)."""
    if RECORD:
        RECORDING[key] = actual.detach().to(torch.float64).cpu().tolist()
        return
    if key not in EXPECTED:
        raise RuntimeError(f"no fixed value {key!r} in helper/kit/public_expected.py: re-record them")
    expect_close(key, actual, torch.tensor(EXPECTED[key], dtype=torch.float64), tolerance)


def expect_params(module: nn.Module, shapes: Dict[str, Tuple[int, ...]]) -> None:
    """CheckFailed unless the module's parameters are exactly these names and shapes."""
    got = {name: tuple(p.shape) for name, p in module.named_parameters()}
    if got != shapes:
        raise CheckFailed(f"{type(module).__name__} parameters: expected {shapes}, got {got}")


def set_params(module: nn.Module, start: float = 0.0) -> nn.Module:
    """Give every parameter fixed values (float64), in name order."""
    module.double()
    with torch.no_grad():
        for index, (_, param) in enumerate(sorted(module.named_parameters())):
            param.copy_(values(*param.shape, start=start + index, scale=0.5))
    return module


def torch_rnn(Wx, Wh, b) -> nn.RNN:
    """PyTorch's nn.RNN (tanh, batch first) holding Wx (D, H), Wh (H, H), b (H,)."""
    rnn = nn.RNN(Wx.shape[0], Wx.shape[1], batch_first=True).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(Wx.T)
        rnn.weight_hh_l0.copy_(Wh.T)
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
    return rnn


def torch_lstm(Wx, Wh, b) -> nn.LSTM:
    """PyTorch's nn.LSTM (batch first) with our weights; PyTorch orders the gates i, f, g, o, we i, f, o, g."""
    def reorder(W):
        i, f, o, g = W.chunk(4, dim=-1)
        return torch.cat([i, f, g, o], dim=-1)

    lstm = nn.LSTM(Wx.shape[0], Wh.shape[0], batch_first=True).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(reorder(Wx).T)
        lstm.weight_hh_l0.copy_(reorder(Wh).T)
        lstm.bias_ih_l0.copy_(reorder(b))
        lstm.bias_hh_l0.zero_()
    return lstm


def expect_numeric_gradients(label: str, f: Callable, inputs: list, analytic: list, upstream, names) -> None:
    """Each analytic gradient against the numeric gradient of sum(upstream * f(inputs)) for that input."""
    for index, (x, grad) in enumerate(zip(inputs, analytic)):
        def f_of(v, index=index):
            return f(*inputs[:index], v, *inputs[index + 1:])

        numeric = compute_numeric_gradient(f_of, x, upstream)
        expect_close(f"{label} gradient of {names[index]}", grad, numeric, 1e-6)


@contextlib.contextmanager
def captured_stdout():
    """Collect what the code under check prints (returned as a StringIO)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer
