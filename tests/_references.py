"""
Independent reference computations the tests compare the module against.

They are written from the definitions in the API contract, with torch's own
layers where one exists (nn.RNN, nn.LSTM), never with code of the module
under test.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def torch_rnn(Wx: torch.Tensor, Wh: torch.Tensor, b: torch.Tensor) -> nn.RNN:
    """
    torch.nn.RNN (tanh, batch_first) holding the given weights.

    Inputs:
    - Wx (D, H), Wh (H, H), b (H,): weights in the assignment's layout
    """
    D, H = Wx.shape
    rnn = nn.RNN(D, H, batch_first=True, nonlinearity="tanh").to(Wx.dtype)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(Wx.t())
        rnn.weight_hh_l0.copy_(Wh.t())
        rnn.bias_ih_l0.copy_(b)
        rnn.bias_hh_l0.zero_()
    return rnn


def rnn_step(x, prev_h, Wx, Wh, b):
    """
    One step of a vanilla RNN, written out.

    Inputs:
    - x (N, D), prev_h (N, H), Wx (D, H), Wh (H, H), b (H,)

    Returns:
    - next_h (N, H)
    """
    return torch.tanh(x @ Wx + prev_h @ Wh + b)


def rnn_loop(x, h0, Wx, Wh, b):
    """
    A vanilla RNN written as a plain loop (differentiable by autograd).

    Inputs:
    - x (N, T, D), h0 (N, H), Wx (D, H), Wh (H, H), b (H,)

    Returns:
    - h (N, T, H)
    """
    h, hs = h0, []
    for t in range(x.shape[1]):
        h = rnn_step(x[:, t], h, Wx, Wh, b)
        hs.append(h)
    return torch.stack(hs, dim=1)


def ifog_to_torch(W: torch.Tensor) -> torch.Tensor:
    """
    Reorder gate blocks along the last axis from this module's i, f, o, g to
    torch's i, f, g, o.

    Inputs:
    - W: (..., 4H)

    Returns:
    - (..., 4H) with the o and g blocks swapped
    """
    i, f, o, g = W.chunk(4, dim=-1)
    return torch.cat([i, f, g, o], dim=-1)


def torch_lstm(Wx: torch.Tensor, Wh: torch.Tensor, b: torch.Tensor) -> nn.LSTM:
    """
    torch.nn.LSTM (batch_first) holding the given weights.

    Inputs:
    - Wx (D, 4H), Wh (H, 4H), b (4H,): gate order i, f, o, g
    """
    D, H = Wx.shape[0], Wh.shape[0]
    lstm = nn.LSTM(D, H, batch_first=True).to(Wx.dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(ifog_to_torch(Wx).t())
        lstm.weight_hh_l0.copy_(ifog_to_torch(Wh).t())
        lstm.bias_ih_l0.copy_(ifog_to_torch(b))
        lstm.bias_hh_l0.zero_()
    return lstm


def lstm_step(a: torch.Tensor, prev_c: torch.Tensor):
    """
    The LSTM update from gate pre-activations a (N, 4H) in the order i, f, o, g.

    Returns (next_h, next_c), each (N, H).
    """
    H = prev_c.shape[1]
    i = torch.sigmoid(a[:, 0:H])
    f = torch.sigmoid(a[:, H : 2 * H])
    o = torch.sigmoid(a[:, 2 * H : 3 * H])
    g = torch.tanh(a[:, 3 * H : 4 * H])
    next_c = f * prev_c + i * g
    next_h = o * torch.tanh(next_c)
    return next_h, next_c


def attention(prev_h: torch.Tensor, A: torch.Tensor):
    """
    Scaled dot-product attention, one location at a time.

    Inputs:
    - prev_h (N, H), A (N, H, Da, Da)

    Returns:
    - attn (N, H), weights (N, Da, Da)
    """
    N, H, Da, _ = A.shape
    scores = torch.einsum("nh,nhij->nij", prev_h, A) / math.sqrt(H)
    weights = F.softmax(scores.reshape(N, -1), dim=1).reshape(N, Da, Da)
    attn = torch.einsum("nij,nhij->nh", weights, A)
    return attn, weights


def attention_lstm(x, A, Wx, Wh, Wattn, b):
    """
    The attention LSTM over a sequence.

    Inputs:
    - x (N, T, D), A (N, H, Da, Da), Wx (D, 4H), Wh (H, 4H), Wattn (H, 4H), b (4H,)

    Returns:
    - h (N, T, H) and the attention weights of every step (N, T, Da, Da)
    """
    h = c = A.mean(dim=(2, 3))
    hs, weights_all = [], []
    for t in range(x.shape[1]):
        attn, weights = attention(h, A)
        h, c = lstm_step(x[:, t] @ Wx + h @ Wh + attn @ Wattn + b, c)
        hs.append(h)
        weights_all.append(weights)
    return torch.stack(hs, dim=1), torch.stack(weights_all, dim=1)


def temporal_loss(x: torch.Tensor, y: torch.Tensor, ignore_index=None) -> torch.Tensor:
    """
    Cross-entropy of every (sample, step), summed over time and averaged over the batch.

    Inputs:
    - x (N, T, V) scores, y (N, T) targets
    """
    N, T, V = x.shape
    log_probs = torch.log_softmax(x, dim=2)
    picked = -log_probs.gather(2, y.unsqueeze(2)).squeeze(2)  # (N, T)
    if ignore_index is not None:
        picked = picked * (y != ignore_index)
    return picked.sum() / N


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
