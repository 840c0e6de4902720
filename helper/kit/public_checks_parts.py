"""
Public checks of the building blocks: the vanilla RNN, the word embedding
and the loss, the LSTM, attention, and the image encoder (see
helper/kit/check_tools.py for what a check may compare with).
"""
import math

import torch

from helper.captioning.checkpoint import ENCODER_CHANNELS
from helper.kit.check_tools import (
    CheckFailed,
    call,
    expect_close,
    expect_fixed,
    expect_numeric_gradients,
    expect_params,
    expect_tensor,
    set_params,
    torch_lstm,
    torch_rnn,
    values,
)


# ----------------------------------------------------------------------------- rnn
def rnn_step_forward_vs_torch(m):
    N, D, H = 3, 5, 4
    x, prev_h = values(N, D, start=0.1), values(N, H, start=0.2)
    Wx, Wh, b = values(D, H, start=0.3, scale=0.5), values(H, H, start=0.4, scale=0.5), values(H, start=0.5)
    next_h, _ = call("rnn_step_forward", m.rnn_step_forward, x, prev_h, Wx, Wh, b)
    with torch.no_grad():
        expected = torch_rnn(Wx, Wh, b)(x.unsqueeze(1), prev_h.unsqueeze(0))[0].squeeze(1)
    expect_close("next_h", next_h, expected, 1e-10)


def rnn_step_backward_vs_numeric(m):
    N, D, H = 3, 4, 5
    inputs = [values(N, D, start=1.0), values(N, H, start=2.0), values(D, H, start=3.0),
              values(H, H, start=4.0, scale=0.5), values(H, start=5.0)]
    out, cache = call("rnn_step_forward", m.rnn_step_forward, *inputs)
    upstream = values(*out.shape, start=6.0)
    grads = call("rnn_step_backward", m.rnn_step_backward, upstream, cache)
    step = lambda *args: m.rnn_step_forward(*args)[0]  # noqa: E731
    expect_numeric_gradients("rnn_step_backward", step, inputs, list(grads), upstream,
                             ("dx", "dprev_h", "dWx", "dWh", "db"))


def rnn_forward_vs_torch(m):
    N, T, D, H = 2, 4, 3, 5
    x, h0 = values(N, T, D, start=0.7), values(N, H, start=0.8)
    Wx, Wh, b = values(D, H, start=0.9, scale=0.5), values(H, H, start=1.1, scale=0.5), values(H, start=1.2)
    h, _ = call("rnn_forward", m.rnn_forward, x, h0, Wx, Wh, b)
    with torch.no_grad():
        expected, _ = torch_rnn(Wx, Wh, b)(x, h0.unsqueeze(0))
    expect_close("h", h, expected, 1e-10)


def rnn_backward_vs_numeric(m):
    N, T, D, H = 2, 4, 3, 4
    inputs = [values(N, T, D, start=1.5), values(N, H, start=2.5), values(D, H, start=3.5),
              values(H, H, start=4.5, scale=0.5), values(H, start=5.5)]
    out, cache = call("rnn_forward", m.rnn_forward, *inputs)
    upstream = values(*out.shape, start=6.5)
    grads = call("rnn_backward", m.rnn_backward, upstream, cache)
    sequence = lambda *args: m.rnn_forward(*args)[0]  # noqa: E731
    expect_numeric_gradients("rnn_backward", sequence, inputs, list(grads), upstream,
                             ("dx", "dh0", "dWx", "dWh", "db"))


def rnn_module_vs_torch(m):
    D, H = 4, 5
    rnn = m.RNN(D, H)
    expect_params(rnn, {"Wx": (D, H), "Wh": (H, H), "b": (H,)})
    set_params(rnn)
    x, h0 = values(2, 3, D, start=0.3), values(2, H, start=0.6)
    reference = torch_rnn(rnn.Wx.detach(), rnn.Wh.detach(), rnn.b.detach())
    with torch.no_grad():
        expect_close("RNN.forward", call("RNN.forward", rnn, x, h0), reference(x, h0.unsqueeze(0))[0], 1e-10)
        one_step = reference(x[:, :1], h0.unsqueeze(0))[0].squeeze(1)
        expect_close("RNN.step_forward", call("RNN.step_forward", rnn.step_forward, x[:, 0], h0), one_step, 1e-10)


# ------------------------------------------------------------------- embedding_loss
def embedding_fixed(m):
    V, W = 6, 3
    embedding = m.WordEmbedding(V, W)
    expect_params(embedding, {"W_embed": (V, W)})
    set_params(embedding)
    x = torch.tensor([[0, 3, 1, 5], [2, 2, 4, 0]])
    with torch.no_grad():
        expect_fixed("WordEmbedding.forward", call("WordEmbedding.forward", embedding, x))


def _targets():
    """Targets (3, 4) over V = 6 words, with <NULL> = 0 padding at the ends of two captions."""
    return torch.tensor([[3, 1, 0, 0], [2, 5, 4, 1], [5, 2, 3, 0]])


def loss_fixed(m):
    x = values(3, 4, 6, start=0.4, scale=2.0)
    loss = call("temporal_softmax_loss", m.temporal_softmax_loss, x, _targets(), ignore_index=0)
    expect_tensor("loss", loss, ())
    expect_fixed("temporal_softmax_loss", loss)


def loss_equal_scores(m):
    # With equal scores every counted word costs log V: the loss is log V * (counted targets) / N.
    N, T, V = 3, 4, 6
    y = _targets()
    loss = call("temporal_softmax_loss", m.temporal_softmax_loss, torch.zeros(N, T, V, dtype=torch.float64), y,
                ignore_index=0)
    counted = int((y != 0).sum())
    expected = torch.tensor(counted / N * math.log(V), dtype=torch.float64)
    expect_close(f"loss with equal scores ({counted} counted words, N = {N}, V = {V})", loss, expected, 1e-10)


def loss_gradient(m):
    x = values(3, 4, 6, start=1.4).requires_grad_()
    y = _targets()
    loss = call("temporal_softmax_loss", m.temporal_softmax_loss, x, y, ignore_index=0)
    if not loss.requires_grad:
        raise CheckFailed("the loss does not depend on the scores through autograd (requires_grad is False)")
    (analytic,) = torch.autograd.grad(loss, x)
    numeric = _numeric_loss_gradient(m, x.detach().clone(), y)
    expect_close("gradient of the loss", analytic, numeric, 1e-6)


def _numeric_loss_gradient(m, x, y):
    from helper.captioning.gradcheck import compute_numeric_gradient

    return compute_numeric_gradient(lambda v: m.temporal_softmax_loss(v, y, ignore_index=0), x)


# ----------------------------------------------------------------------------- lstm
def _lstm(m, D, H):
    lstm = m.LSTM(D, H)
    expect_params(lstm, {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,)})
    return set_params(lstm, start=0.2)


def lstm_step_vs_torch(m):
    N, D, H = 3, 4, 5
    lstm = _lstm(m, D, H)
    x, prev_h, prev_c = values(N, D, start=0.1), values(N, H, start=0.2), values(N, H, start=0.3)
    with torch.no_grad():
        next_h, next_c = call("LSTM.step_forward", lstm.step_forward, x, prev_h, prev_c)
        _, (h, c) = torch_lstm(lstm.Wx, lstm.Wh, lstm.b)(x.unsqueeze(1), (prev_h.unsqueeze(0), prev_c.unsqueeze(0)))
    expect_close("next_h", next_h, h[0], 1e-10)
    expect_close("next_c", next_c, c[0], 1e-10)


def lstm_forward_vs_torch(m):
    N, T, D, H = 2, 5, 3, 4
    lstm = _lstm(m, D, H)
    x, h0 = values(N, T, D, start=0.4), values(N, H, start=0.5)
    with torch.no_grad():
        hn = call("LSTM.forward", lstm, x, h0)
        expected, _ = torch_lstm(lstm.Wx, lstm.Wh, lstm.b)(x, (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0)))
    expect_close("hn", hn, expected, 1e-10)


# ------------------------------------------------------------------------ attention
def attention_by_hand(m):
    # Location k of the 4x4 grid holds 2 e_k (H = 16); the query e_0 (e_5) scores 2 / sqrt(16) = 0.5 on
    # location 0 (5) and 0 elsewhere, so its weights are (e^0.5 there, 1 elsewhere) / (e^0.5 + 15).
    H = 16
    A = (2 * torch.eye(H, dtype=torch.float64)).view(1, H, 4, 4).repeat(2, 1, 1, 1)
    prev_h = torch.zeros(2, H, dtype=torch.float64)
    prev_h[0, 0] = prev_h[1, 5] = 1.0
    attn, weights = call("dot_product_attention", m.dot_product_attention, prev_h, A)
    expected = torch.ones(2, H, dtype=torch.float64)
    expected[0, 0] = expected[1, 5] = math.exp(0.5)
    expected /= math.exp(0.5) + 15
    expect_close("attn_weights", weights, expected.view(2, 4, 4), 1e-10)
    expect_close("attn", attn, 2 * expected, 1e-10)


def attention_fixed(m):
    N, H = 2, 5
    attn, weights = call("dot_product_attention", m.dot_product_attention, values(N, H, start=0.3),
                         values(N, H, 4, 4, start=0.7, scale=1.5))
    expect_tensor("attn_weights", weights, (N, 4, 4))
    expect_close("attn_weights summed over the grid", weights.sum(dim=(1, 2)), torch.ones(N, dtype=torch.float64))
    expect_fixed("dot_product_attention attn", attn)
    expect_fixed("dot_product_attention attn_weights", weights)


def _attention_lstm(m, D, H):
    module = m.AttentionLSTM(D, H)
    shapes = {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "Wattn": (H, 4 * H), "b": (4 * H,)}
    expect_params(module, shapes)
    return set_params(module, start=0.6)


def attention_lstm_step_fixed(m):
    N, D, H = 2, 3, 4
    module = _attention_lstm(m, D, H)
    inputs = (values(N, D, start=0.1), values(N, H, start=0.2), values(N, H, start=0.3), values(N, H, start=0.4))
    with torch.no_grad():
        next_h, next_c = call("AttentionLSTM.step_forward", module.step_forward, *inputs)
    expect_fixed("AttentionLSTM.step_forward next_h", next_h)
    expect_fixed("AttentionLSTM.step_forward next_c", next_c)


def attention_lstm_forward_fixed(m):
    N, T, D, H = 2, 4, 3, 4
    module = _attention_lstm(m, D, H)
    with torch.no_grad():
        hn = call("AttentionLSTM.forward", module, values(N, T, D, start=0.5), values(N, H, 4, 4, start=0.9))
    expect_fixed("AttentionLSTM.forward", hn)


# -------------------------------------------------------------------------- encoder
def _images(n: int = 2) -> torch.Tensor:
    """Fixed uint8 images (n, 3, 112, 112)."""
    return ((values(n, 3, 112, 112, start=0.2) + 1) * 127.5).round().to(torch.uint8)


def encoder_features(m):
    encoder = call("ImageEncoder", m.ImageEncoder, pretrained=False, verbose=False).eval()
    if encoder.out_channels != ENCODER_CHANNELS:
        raise CheckFailed(f"ImageEncoder.out_channels: expected {ENCODER_CHANNELS}, got {encoder.out_channels}")
    images = _images()
    with torch.no_grad():
        from_uint8 = expect_tensor("c5 features of uint8 images", call("ImageEncoder.forward", encoder, images),
                                   (2, ENCODER_CHANNELS, 4, 4))
        from_float = call("ImageEncoder.forward", encoder, images.float() / 255)
    expect_close("c5 features of float images in [0, 1] against uint8 images", from_float,
                 from_uint8.double(), 1e-4)


CHECKS = {
    "rnn": [
        ("rnn_step_forward matches torch.nn.RNN", rnn_step_forward_vs_torch),
        ("rnn_step_backward matches numeric gradients", rnn_step_backward_vs_numeric),
        ("rnn_forward matches torch.nn.RNN", rnn_forward_vs_torch),
        ("rnn_backward matches numeric gradients", rnn_backward_vs_numeric),
        ("RNN module: parameters, forward and step_forward", rnn_module_vs_torch),
    ],
    "embedding_loss": [
        ("WordEmbedding: parameter and fixed values", embedding_fixed),
        ("temporal_softmax_loss: fixed values with <NULL> padding", loss_fixed),
        ("temporal_softmax_loss: equal scores cost log V per counted word", loss_equal_scores),
        ("temporal_softmax_loss: autograd gradient matches numeric gradient", loss_gradient),
    ],
    "lstm": [
        ("LSTM.step_forward: parameters, matches torch.nn.LSTM", lstm_step_vs_torch),
        ("LSTM.forward matches torch.nn.LSTM", lstm_forward_vs_torch),
    ],
    "attention": [
        ("dot_product_attention: the case worked out by hand", attention_by_hand),
        ("dot_product_attention: fixed values, weights sum to one", attention_fixed),
        ("AttentionLSTM.step_forward: parameters and fixed values", attention_lstm_step_fixed),
        ("AttentionLSTM.forward: fixed values", attention_lstm_forward_fixed),
    ],
    "encoder": [
        ("ImageEncoder: (N, 400, 4, 4) features; uint8 and float images agree", encoder_features),
    ],
}
