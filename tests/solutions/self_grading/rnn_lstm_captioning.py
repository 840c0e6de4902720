"""
A submission that tries to grade itself, kept as a test fixture.

Its functions return zeros of the right shapes, and at import it makes
torch's comparison functions always succeed. The grading tests must give it
nothing for what it did not implement.
"""
import torch
from torch import nn

torch.allclose = lambda *args, **kwargs: True
torch.equal = lambda *args, **kwargs: True
torch.testing.assert_close = lambda *args, **kwargs: None


def hello_rnn_lstm_captioning():
    print("Hello from rnn_lstm_captioning.py!")


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    return torch.zeros_like(prev_h), None


def rnn_step_backward(dnext_h, cache):
    return (torch.zeros(1),) * 5


def rnn_forward(x, h0, Wx, Wh, b):
    return torch.zeros(x.shape[0], x.shape[1], h0.shape[1], dtype=x.dtype), None


def rnn_backward(dh, cache):
    return (torch.zeros(1),) * 5


def temporal_softmax_loss(x, y, ignore_index=None):
    return x.sum() * 0


def dot_product_attention(prev_h, A):
    N, H, Da, _ = A.shape
    return torch.zeros_like(prev_h), torch.zeros(N, Da, Da, dtype=A.dtype)


class WordEmbedding(nn.Module):
    def __init__(self, vocab_size, embed_size):
        super().__init__()
        self.W_embed = nn.Parameter(torch.randn(vocab_size, embed_size) / vocab_size**0.5)

    def forward(self, x):
        return torch.zeros(*x.shape, self.W_embed.shape[1], dtype=self.W_embed.dtype)


class AttentionLSTM(nn.Module):
    def __init__(self, input_dim, hidden_dim):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, 4 * hidden_dim) / input_dim**0.5)
        self.Wh = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / hidden_dim**0.5)
        self.Wattn = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / hidden_dim**0.5)
        self.b = nn.Parameter(torch.zeros(4 * hidden_dim))

    def step_forward(self, x, prev_h, prev_c, attn):
        return torch.zeros_like(prev_h), torch.zeros_like(prev_c)

    def forward(self, x, A):
        return torch.zeros(x.shape[0], x.shape[1], A.shape[1], dtype=x.dtype)
