"""Numeric gradients, to check gradients computed by hand or by autograd."""
import torch


def compute_numeric_gradient(f, x, dLdf=None, h=1e-7):
    """
    Numeric gradient of f at x by centered differences:
        df/dx_i ~ (f(x + h e_i) - f(x - h e_i)) / (2 h)

    For a tensor-valued f the gradient is that of the scalar L = sum(dLdf * f),
    so dLdf plays the part of the upstream gradient. Use float64: in float32
    the differences drown in rounding error.

    Inputs:
    - f: function taking x and returning a tensor
    - x: the point, a tensor of any shape; changed in place during the call
      and restored before returning
    - dLdf: upstream gradient, same shape as f(x); ones when None
    - h: step size

    Returns:
    - grad: numeric gradient, same shape as x
    """
    flat_x = x.contiguous().view(-1)
    if flat_x.data_ptr() != x.data_ptr():
        raise ValueError("compute_numeric_gradient needs a contiguous x, which it perturbs in place")
    fx = f(x)
    if dLdf is None:
        dLdf = torch.ones_like(fx)
    elif dLdf.shape != fx.shape:
        raise ValueError(f"dLdf must have the shape of f(x), {tuple(fx.shape)}; got {tuple(dLdf.shape)}")

    grad = torch.zeros_like(x)
    flat_grad = grad.view(-1)
    for i in range(flat_x.shape[0]):
        old = flat_x[i].item()
        flat_x[i] = old + h
        f_plus = f(x).clone()
        flat_x[i] = old - h
        f_minus = f(x).clone()
        flat_x[i] = old
        flat_grad[i] = ((f_plus - f_minus) * dLdf).sum() / (2 * h)
    return grad


def rel_error(x, y, eps=1e-10):
    """
    Relative error between two tensors: max |x - y| / max(|x| + |y|).

    Inputs:
    - x, y: tensors of the same shape
    - eps: guards against division by zero

    Returns:
    - the relative error, a Python float
    """
    top = (x - y).abs().max().item()
    bot = (x.abs() + y.abs()).clamp(min=eps).max().item()
    return top / bot
