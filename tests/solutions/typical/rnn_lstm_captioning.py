"""
A typical student solution, kept as a test fixture (not used by the tool).

Written for this suite from the standard assignment's text, the way most
students write it: the 4x4 grid of 112x112 images hard-coded, `.squeeze()`
after batched products (a batch of one breaks), `ignore_index` handed
straight to `cross_entropy` (None breaks), no input validation, the encoder
built with torchvision's deprecated `pretrained=` argument (a warning on
stderr) and printing whenever it is built, its own attribute names. Every one
of these is within the contract (README: "The contract"), so this file must
get full marks and keep `make test` green when swapped in.
"""
import math

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models import feature_extraction


def hello_rnn_lstm_captioning():
    print("Hello from rnn_lstm_captioning.py!")


class ImageEncoder(nn.Module):
    def __init__(self, pretrained: bool = True, verbose: bool = True):
        super().__init__()
        self.cnn = torchvision.models.regnet_x_400mf(pretrained=pretrained)
        self.backbone = feature_extraction.create_feature_extractor(
            self.cnn, return_nodes={"trunk_output.block4": "c5"}
        )
        # Pass a dummy batch through to find the number of output channels.
        dummy_out = self.backbone(torch.randn(2, 3, 224, 224))["c5"]
        self._out_channels = dummy_out.shape[1]
        if verbose:
            print("For input images in NCHW format, shape (2, 3, 224, 224)")
            print(f"Shape of output c5 features: {dummy_out.shape}")
        self.normalize = torchvision.transforms.Normalize(
            mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
        )

    @property
    def out_channels(self):
        return self._out_channels

    def forward(self, images: torch.Tensor):
        if images.dtype == torch.uint8:
            images = images.to(dtype=self.cnn.stem[0].weight.dtype)
            images /= 255.0
        images = self.normalize(images)
        features = self.backbone(images)["c5"]
        return features


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    next_h = torch.tanh(x.mm(Wx) + prev_h.mm(Wh) + b)
    cache = (x, prev_h, Wx, Wh, b, next_h)
    return next_h, cache


def rnn_step_backward(dnext_h, cache):
    x, prev_h, Wx, Wh, b, next_h = cache
    dtanh = dnext_h * (1 - next_h ** 2)
    dx = dtanh.mm(Wx.t())
    dprev_h = dtanh.mm(Wh.t())
    dWx = x.t().mm(dtanh)
    dWh = prev_h.t().mm(dtanh)
    db = dtanh.sum(dim=0)
    return dx, dprev_h, dWx, dWh, db


def rnn_forward(x, h0, Wx, Wh, b):
    N, T, D = x.shape
    H = h0.shape[1]
    h = torch.zeros(N, T, H, dtype=h0.dtype, device=h0.device)
    cache = []
    prev_h = h0
    for t in range(T):
        prev_h, step_cache = rnn_step_forward(x[:, t, :], prev_h, Wx, Wh, b)
        h[:, t, :] = prev_h
        cache.append(step_cache)
    return h, cache


def rnn_backward(dh, cache):
    N, T, H = dh.shape
    D = cache[0][0].shape[1]
    dx = torch.zeros(N, T, D, dtype=dh.dtype, device=dh.device)
    dprev_h = torch.zeros(N, H, dtype=dh.dtype, device=dh.device)
    dWx = torch.zeros(D, H, dtype=dh.dtype, device=dh.device)
    dWh = torch.zeros(H, H, dtype=dh.dtype, device=dh.device)
    db = torch.zeros(H, dtype=dh.dtype, device=dh.device)
    for t in range(T - 1, -1, -1):
        dx_t, dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t, :] + dprev_h, cache[t])
        dx[:, t, :] = dx_t
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    dh0 = dprev_h
    return dx, dh0, dWx, dWh, db


class RNN(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim).div(math.sqrt(input_dim)))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim).div(math.sqrt(hidden_dim)))
        self.b = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x, h0):
        hn, _ = rnn_forward(x, h0, self.Wx, self.Wh, self.b)
        return hn

    def step_forward(self, x, prev_h):
        next_h, _ = rnn_step_forward(x, prev_h, self.Wx, self.Wh, self.b)
        return next_h


class WordEmbedding(nn.Module):
    def __init__(self, vocab_size: int, embed_size: int):
        super().__init__()
        self.W_embed = nn.Parameter(torch.randn(vocab_size, embed_size).div(math.sqrt(vocab_size)))

    def forward(self, x):
        out = self.W_embed[x]
        return out


def temporal_softmax_loss(x, y, ignore_index=None):
    N, T, V = x.shape
    loss = F.cross_entropy(x.reshape(N * T, V), y.reshape(N * T), ignore_index=ignore_index, reduction="sum")
    loss = loss / N
    return loss


class LSTM(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4).div(math.sqrt(input_dim)))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4).div(math.sqrt(hidden_dim)))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c):
        H = prev_h.shape[1]
        a = x.mm(self.Wx) + prev_h.mm(self.Wh) + self.b
        i = torch.sigmoid(a[:, :H])
        f = torch.sigmoid(a[:, H : 2 * H])
        o = torch.sigmoid(a[:, 2 * H : 3 * H])
        g = torch.tanh(a[:, 3 * H :])
        next_c = f * prev_c + i * g
        next_h = o * torch.tanh(next_c)
        return next_h, next_c

    def forward(self, x, h0):
        c0 = torch.zeros_like(h0)
        N, T, D = x.shape
        H = h0.shape[1]
        hn = torch.zeros(N, T, H, dtype=h0.dtype, device=h0.device)
        prev_h, prev_c = h0, c0
        for t in range(T):
            prev_h, prev_c = self.step_forward(x[:, t, :], prev_h, prev_c)
            hn[:, t, :] = prev_h
        return hn


def dot_product_attention(prev_h, A):
    N, H, D_a, _ = A.shape
    A_flat = A.reshape(N, H, -1)  # (N, H, 16)
    attn_scores = torch.bmm(prev_h.unsqueeze(1), A_flat).squeeze() / math.sqrt(H)  # (N, 16)
    attn_weights = F.softmax(attn_scores, dim=1)
    attn = torch.bmm(A_flat, attn_weights.unsqueeze(2)).squeeze()  # (N, H)
    attn_weights = attn_weights.reshape(N, 4, 4)
    return attn, attn_weights


class AttentionLSTM(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4).div(math.sqrt(input_dim)))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4).div(math.sqrt(hidden_dim)))
        self.Wattn = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4).div(math.sqrt(hidden_dim)))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c, attn):
        H = prev_h.shape[1]
        a = x.mm(self.Wx) + prev_h.mm(self.Wh) + attn.mm(self.Wattn) + self.b
        i = torch.sigmoid(a[:, :H])
        f = torch.sigmoid(a[:, H : 2 * H])
        o = torch.sigmoid(a[:, 2 * H : 3 * H])
        g = torch.tanh(a[:, 3 * H :])
        next_c = f * prev_c + i * g
        next_h = o * torch.tanh(next_c)
        return next_h, next_c

    def forward(self, x, A):
        h0 = A.mean(dim=(2, 3))
        c0 = h0
        N, T, D = x.shape
        H = A.shape[1]
        hn = torch.zeros(N, T, H, dtype=A.dtype, device=A.device)
        prev_h, prev_c = h0, c0
        for t in range(T):
            attn, _ = dot_product_attention(prev_h, A)
            prev_h, prev_c = self.step_forward(x[:, t, :], prev_h, prev_c, attn)
            hn[:, t, :] = prev_h
        return hn


class CaptioningRNN(nn.Module):
    def __init__(
        self,
        word_to_idx,
        input_dim: int = 512,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        cell_type: str = "rnn",
        image_encoder_pretrained: bool = True,
        ignore_index=None,
    ):
        super().__init__()
        if cell_type not in {"rnn", "lstm", "attn"}:
            raise ValueError('Invalid cell_type "%s"' % cell_type)

        self.cell_type = cell_type
        self.word_to_idx = word_to_idx
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}

        vocab_size = len(word_to_idx)

        self._null = word_to_idx["<NULL>"]
        self._start = word_to_idx.get("<START>", None)
        self._end = word_to_idx.get("<END>", None)
        self.ignore_index = ignore_index

        self.image_encoder = ImageEncoder(pretrained=image_encoder_pretrained)
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.word_embed = WordEmbedding(vocab_size, wordvec_dim)
        if cell_type == "rnn":
            self.recurrent = RNN(wordvec_dim, hidden_dim)
        elif cell_type == "lstm":
            self.recurrent = LSTM(wordvec_dim, hidden_dim)
        else:
            self.recurrent = AttentionLSTM(wordvec_dim, hidden_dim)
        self.to_vocab = nn.Linear(hidden_dim, vocab_size)

    def forward(self, images, captions):
        captions_in = captions[:, :-1]
        captions_out = captions[:, 1:]

        features = self.image_encoder(images)  # (N, 400, 4, 4)
        x = self.word_embed(captions_in)
        if self.cell_type == "attn":
            A = self.input_proj(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            hn = self.recurrent(x, A)
        else:
            h0 = self.input_proj(features.mean(dim=(2, 3)))
            hn = self.recurrent(x, h0)
        scores = self.to_vocab(hn)
        loss = temporal_softmax_loss(scores, captions_out, ignore_index=self.ignore_index)
        return loss

    def sample(self, images, max_length=15):
        N = images.shape[0]
        captions = self._null * images.new(N, max_length).fill_(1).long()

        if self.cell_type == "attn":
            attn_weights_all = images.new(N, max_length, 4, 4).fill_(0).float()

        features = self.image_encoder(images)
        if self.cell_type == "attn":
            A = self.input_proj(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            h = A.mean(dim=(2, 3))
            c = h
        else:
            h = self.input_proj(features.mean(dim=(2, 3)))
            c = torch.zeros_like(h)

        words = torch.full((N,), self._start, dtype=torch.long, device=images.device)
        for t in range(max_length):
            x = self.word_embed(words)
            if self.cell_type == "rnn":
                h = self.recurrent.step_forward(x, h)
            elif self.cell_type == "lstm":
                h, c = self.recurrent.step_forward(x, h, c)
            else:
                attn, attn_weights = dot_product_attention(h, A)
                attn_weights_all[:, t] = attn_weights
                h, c = self.recurrent.step_forward(x, h, c, attn)
            scores = self.to_vocab(h)
            words = scores.argmax(dim=1)
            captions[:, t] = words

        if self.cell_type == "attn":
            return captions, attn_weights_all.cpu()
        else:
            return captions
