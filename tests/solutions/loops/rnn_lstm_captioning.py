"""
A second independent solution, kept as a test fixture (not used by the tool).

Written for this suite from the standard assignment's text, as differently
from the repository's module as the contract allows: explicit loops over time
steps, gates and grid locations where the module vectorises; the embedding as
a one-hot matrix product; the loss as log-softmax with a mask; the gates as
four separate slices of the weights; private state under other names; the
encoder's normalisation by hand; nothing validated. It must get full marks and
keep `make test` green when swapped in.
"""
import math

import torch
import torchvision
from torch import nn
from torchvision.models import feature_extraction


def hello_rnn_lstm_captioning():
    print("Hello from rnn_lstm_captioning.py!")


class ImageEncoder(nn.Module):
    def __init__(self, pretrained: bool = True, verbose: bool = True):
        super().__init__()
        weights = torchvision.models.RegNet_X_400MF_Weights.IMAGENET1K_V2 if pretrained else None
        regnet = torchvision.models.regnet_x_400mf(weights=weights)
        self.trunk = feature_extraction.create_feature_extractor(regnet, {"trunk_output.block4": "c5"})
        self.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]).reshape(3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([0.229, 0.224, 0.225]).reshape(3, 1, 1))
        if verbose:
            print("ImageEncoder: c5 has 400 channels, 1/32 of the image's height and width")

    @property
    def out_channels(self):
        return 400

    def forward(self, images):
        x = images
        if x.dtype == torch.uint8:
            x = x.to(self.pixel_mean.dtype) / 255
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        return self.trunk(x)["c5"]


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    pre = torch.matmul(x, Wx) + torch.matmul(prev_h, Wh) + b.unsqueeze(0)
    next_h = torch.tanh(pre)
    return next_h, {"x": x, "h": prev_h, "Wx": Wx, "Wh": Wh, "out": next_h}


def rnn_step_backward(dnext_h, cache):
    dpre = dnext_h * (1.0 - cache["out"] * cache["out"])
    dx = torch.matmul(dpre, cache["Wx"].transpose(0, 1))
    dprev_h = torch.matmul(dpre, cache["Wh"].transpose(0, 1))
    dWx = torch.matmul(cache["x"].transpose(0, 1), dpre)
    dWh = torch.matmul(cache["h"].transpose(0, 1), dpre)
    db = torch.sum(dpre, 0)
    return dx, dprev_h, dWx, dWh, db


def rnn_forward(x, h0, Wx, Wh, b):
    states = []
    caches = []
    h = h0
    for t in range(x.shape[1]):
        h, c = rnn_step_forward(x[:, t], h, Wx, Wh, b)
        states.append(h.unsqueeze(1))
        caches.append(c)
    return torch.cat(states, dim=1), caches


def rnn_backward(dh, cache):
    T = len(cache)
    grads_x = []
    dWx, dWh, db = None, None, None
    carry = 0
    for t in range(T - 1, -1, -1):
        dx_t, carry, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t] + carry, cache[t])
        grads_x.insert(0, dx_t.unsqueeze(1))
        dWx = dWx_t if dWx is None else dWx + dWx_t
        dWh = dWh_t if dWh is None else dWh + dWh_t
        db = db_t if db is None else db + db_t
    return torch.cat(grads_x, dim=1), carry, dWx, dWh, db


class RNN(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim) / input_dim**0.5)
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim) / hidden_dim**0.5)
        self.b = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x, h0):
        return rnn_forward(x, h0, self.Wx, self.Wh, self.b)[0]

    def step_forward(self, x, prev_h):
        return rnn_step_forward(x, prev_h, self.Wx, self.Wh, self.b)[0]


class WordEmbedding(nn.Module):
    def __init__(self, vocab_size: int, embed_size: int):
        super().__init__()
        self.W_embed = nn.Parameter(torch.randn(vocab_size, embed_size) / vocab_size**0.5)

    def forward(self, x):
        one_hot = torch.nn.functional.one_hot(x.long(), self.W_embed.shape[0]).to(self.W_embed.dtype)
        return one_hot @ self.W_embed


def temporal_softmax_loss(x, y, ignore_index=None):
    N, T, V = x.shape
    total = x.new_zeros(())
    for t in range(T):
        log_p = x[:, t] - torch.logsumexp(x[:, t], dim=1, keepdim=True)
        picked = log_p.gather(1, y[:, t].long().unsqueeze(1)).squeeze(1)
        if ignore_index is not None:
            picked = picked * (y[:, t] != ignore_index).to(picked.dtype)
        total = total - picked.sum()
    return total / N


def _gates(a, H):
    """The four gate pre-activations, in the order i, f, o, g."""
    return [a[:, k * H : (k + 1) * H] for k in range(4)]


def _lstm_update(a, prev_c):
    H = prev_c.shape[1]
    a_i, a_f, a_o, a_g = _gates(a, H)
    i = 1 / (1 + torch.exp(-a_i))
    f = 1 / (1 + torch.exp(-a_f))
    o = 1 / (1 + torch.exp(-a_o))
    g = torch.tanh(a_g)
    c = f * prev_c + i * g
    return o * torch.tanh(c), c


class LSTM(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, 4 * hidden_dim) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(4 * hidden_dim))

    def step_forward(self, x, prev_h, prev_c):
        return _lstm_update(x @ self.Wx + prev_h @ self.Wh + self.b, prev_c)

    def forward(self, x, h0):
        h, c = h0, h0 * 0
        outputs = []
        for t in range(x.shape[1]):
            h, c = self.step_forward(x[:, t], h, c)
            outputs.append(h)
        return torch.stack(outputs, 1)


def dot_product_attention(prev_h, A):
    N, H, rows, cols = A.shape
    scale = math.sqrt(H)
    scores = []
    for r in range(rows):
        for q in range(cols):
            scores.append((prev_h * A[:, :, r, q]).sum(dim=1) / scale)
    scores = torch.stack(scores, dim=1)  # (N, rows * cols), row-major
    scores = scores - scores.max(dim=1, keepdim=True).values
    weights = torch.exp(scores)
    weights = weights / weights.sum(dim=1, keepdim=True)
    attn = torch.zeros_like(prev_h)
    for k in range(rows * cols):
        attn = attn + weights[:, k : k + 1] * A[:, :, k // cols, k % cols]
    return attn, weights.view(N, rows, cols)


class AttentionLSTM(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, 4 * hidden_dim) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / math.sqrt(hidden_dim))
        self.Wattn = nn.Parameter(torch.randn(hidden_dim, 4 * hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(4 * hidden_dim))

    def step_forward(self, x, prev_h, prev_c, attn):
        return _lstm_update(x @ self.Wx + prev_h @ self.Wh + attn @ self.Wattn + self.b, prev_c)

    def forward(self, x, A):
        N, H = A.shape[:2]
        h = A.reshape(N, H, -1).sum(dim=2) / (A.shape[2] * A.shape[3])
        c = h
        outputs = []
        for t in range(x.shape[1]):
            context, _ = dot_product_attention(h, A)
            h, c = self.step_forward(x[:, t], h, c, context)
            outputs.append(h)
        return torch.stack(outputs, 1)


class CaptioningRNN(nn.Module):
    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128, cell_type="rnn",
                 image_encoder_pretrained=True, ignore_index=None):
        super().__init__()
        if cell_type not in ("rnn", "lstm", "attn"):
            raise ValueError(f"cell_type {cell_type} not supported")
        self.cell_type = cell_type
        self.word_to_idx = word_to_idx
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        self.pad_token = word_to_idx["<NULL>"]
        self.start_token = word_to_idx.get("<START>")
        self.end_token = word_to_idx.get("<END>")
        self.ignore_index = ignore_index
        V = len(word_to_idx)

        self.head = nn.Linear(hidden_dim, V)
        self.decoder = {"rnn": RNN, "lstm": LSTM, "attn": AttentionLSTM}[cell_type](wordvec_dim, hidden_dim)
        self.words = WordEmbedding(V, wordvec_dim)
        self.img_to_hidden = nn.Linear(input_dim, hidden_dim)
        self.cnn = ImageEncoder(pretrained=image_encoder_pretrained, verbose=False)

    def _image_state(self, images):
        feats = self.cnn(images)
        if self.cell_type == "attn":
            projected = self.img_to_hidden(feats.transpose(1, 2).transpose(2, 3))  # (N, Da, Da, H)
            return projected.transpose(2, 3).transpose(1, 2)  # (N, H, Da, Da)
        pooled = feats.flatten(2).mean(-1)
        return self.img_to_hidden(pooled)

    def forward(self, images, captions):
        state = self._image_state(images)
        hidden = self.decoder(self.words(captions[:, :-1]), state)
        return temporal_softmax_loss(self.head(hidden), captions[:, 1:], self.ignore_index)

    def sample(self, images, max_length=15):
        with torch.no_grad():
            state = self._image_state(images)
            N = images.shape[0]
            out = torch.full((N, max_length), self.pad_token, dtype=torch.int64, device=images.device)
            maps = []
            if self.cell_type == "attn":
                A = state
                h = A.mean(dim=(2, 3))
                c = h.clone()
            else:
                h = state
                c = torch.zeros_like(h)
            prev = torch.full((N, 1), self.start_token, dtype=torch.int64, device=images.device)
            for t in range(max_length):
                x = self.words(prev)[:, 0]
                if self.cell_type == "rnn":
                    h = self.decoder.step_forward(x, h)
                elif self.cell_type == "lstm":
                    h, c = self.decoder.step_forward(x, h, c)
                else:
                    context, weights = dot_product_attention(h, A)
                    maps.append(weights.cpu())
                    h, c = self.decoder.step_forward(x, h, c, context)
                prev = self.head(h).argmax(dim=1, keepdim=True)
                out[:, t] = prev[:, 0]
            if self.cell_type == "attn":
                return out, torch.stack(maps, dim=1)
            return out
