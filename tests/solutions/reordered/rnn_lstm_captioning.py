"""
A third independent solution, kept as a test fixture (not used by the tool).

Written for this suite from the standard assignment's text, the kit's given
code (the encoder, the constructors) kept as handed out, the rest in the way
a student who thinks in matrices writes it: every sum of matrix products is
one product of concatenated blocks ([x, h] @ [Wx; Wh]); the RNN's gradients
through that same concatenation; the word embedding as a one-hot product; the
loss from logsumexp by hand; each LSTM gate's pre-activation from its own
column block of the weights; attention as bmm on the flattened grid turned
location-first, (N, 16, H), with the query scaled before the product and a
softmax written out; the projected grid as W @ features and h0 as the mean of the
projected locations (the projection commutes with the mean); the model's
pieces built in another order (so the suite's seeded models are other random
models than with the reference). The 4x4 grid is hard-coded, batched products
are squeezed, nothing is validated.

Every result is the contract's, computed in another order: in float32 they
differ from the reference module's in the last bits, so this file checks that
the suite's tolerances hold for any correct float32 solution. It must get full
marks and keep `make test` green when swapped in.
"""
import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models import feature_extraction


def hello_rnn_lstm_captioning():
    """Print a greeting, to check that the module is importable."""
    print("Hello from rnn_lstm_captioning.py!")


# ---------------------------------------------------------------------------
# Image encoder
# ---------------------------------------------------------------------------

# Statistics of ImageNet, on which torchvision's RegNet weights were trained.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoder(nn.Module):
    """
    Spatial features of an image from torchvision's RegNetX-400MF.

    The features are the output of the last stage of the RegNet trunk
    ("c5"): 400 channels on a grid 32 times smaller than the image, so a
    112x112 image gives a 4x4 grid and each grid cell sees a 28x28 patch.
    """

    def __init__(self, pretrained: bool = True, verbose: bool = True):
        """
        Inputs:
        - pretrained: load ImageNet weights (downloaded once, then cached by
          torchvision); False starts from random weights and works offline.
        - verbose: print the shape of the features of a dummy batch.
        """
        super().__init__()
        cnn = models.regnet_x_400mf(weights=None)
        if pretrained:
            cnn.load_state_dict(_load_imagenet_weights())

        # Keep the trunk up to its last block; the classifier head is unused.
        self.backbone = feature_extraction.create_feature_extractor(
            cnn, return_nodes={"trunk_output.block4": "c5"}
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        if verbose:
            # In eval mode and without gradients, so that the dummy batch
            # leaves the batch-norm statistics (and everything else) as they are.
            was_training = self.backbone.training
            self.backbone.eval()
            with torch.no_grad():
                dummy_out = self.backbone(torch.randn(2, 3, 224, 224))["c5"]
            self.backbone.train(was_training)
            print("For input images in NCHW format, shape (2, 3, 224, 224)")
            print(f"Shape of output c5 features: {dummy_out.shape}")

    @property
    def out_channels(self) -> int:
        """Number of channels of the c5 features: 400 for RegNetX-400MF."""
        return 400

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Inputs:
        - images: (B, 3, H, W), uint8 in [0, 255] or float in [0, 1].

        Returns:
        - c5 features: (B, 400, H / 32, W / 32).
        """
        if images.dtype == torch.uint8:
            # The buffers follow the model's dtype (float32, or float64 after .double()).
            images = images.to(self.mean.dtype) / 255.0
        mean = self.mean.to(images.dtype)
        std = self.std.to(images.dtype)
        images = (images - mean) / std
        return self.backbone(images)["c5"]


def _load_imagenet_weights() -> Dict[str, torch.Tensor]:
    """
    ImageNet weights of RegNetX-400MF, from torchvision's cache or the web.

    Without a network and without a cached file, fail fast with an error
    that says which file to place where, instead of hanging on a download.
    """
    import os
    import socket
    from urllib.error import URLError

    weights = models.RegNet_X_400MF_Weights.IMAGENET1K_V2
    filename = os.path.basename(weights.url)
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    # A cached file is loaded without any network access; a download that
    # cannot connect gives up after the timeout instead of hanging.
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10.0)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (URLError, OSError) as error:
        raise RuntimeError(
            f"Could not download the ImageNet weights of RegNetX-400MF ({error}).\n"
            f"Expected the file {filename} in torchvision's cache {cache_dir} "
            f"(download it from {weights.url} and place it there by hand), "
            f"or use pretrained=False (image_encoder_pretrained=False), which works offline."
        ) from error
    finally:
        socket.setdefaulttimeout(old_timeout)


# ---------------------------------------------------------------------------
# Vanilla RNN
# ---------------------------------------------------------------------------


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    # x Wx + h Wh is one product: [x, h] times Wx stacked on Wh.
    xh = torch.cat([x, prev_h], dim=1)  # (N, D + H)
    W = torch.cat([Wx, Wh], dim=0)  # (D + H, H)
    next_h = torch.tanh(torch.addmm(b, xh, W))
    cache = (xh, W, next_h, x.shape[1])
    return next_h, cache


def rnn_step_backward(dnext_h, cache):
    xh, W, next_h, D = cache
    da = dnext_h * (1 - next_h * next_h)
    dxh = da @ W.t()  # (N, D + H)
    dW = xh.t() @ da  # (D + H, H)
    dx, dprev_h = dxh[:, :D], dxh[:, D:]
    dWx, dWh = dW[:D], dW[D:]
    db = da.sum(dim=0)
    return dx, dprev_h, dWx, dWh, db


def rnn_forward(x, h0, Wx, Wh, b):
    N, T, D = x.shape
    hs = []
    cache = []
    h = h0
    for t in range(T):
        h, c = rnn_step_forward(x[:, t, :], h, Wx, Wh, b)
        hs.append(h)
        cache.append(c)
    h = torch.stack(hs, dim=1)
    return h, cache


def rnn_backward(dh, cache):
    N, T, H = dh.shape
    dxs = [None] * T
    dprev_h = torch.zeros_like(dh[:, 0, :])
    dWx = dWh = db = 0
    for t in reversed(range(T)):
        dx_t, dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t, :] + dprev_h, cache[t])
        dxs[t] = dx_t
        dWx = dWx + dWx_t
        dWh = dWh + dWh_t
        db = db + db_t
    dx = torch.stack(dxs, dim=1)
    dh0 = dprev_h
    return dx, dh0, dWx, dWh, db


class RNN(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x, h0):
        hn, _ = rnn_forward(x, h0, self.Wx, self.Wh, self.b)
        return hn

    def step_forward(self, x, prev_h):
        next_h, _ = rnn_step_forward(x, prev_h, self.Wx, self.Wh, self.b)
        return next_h


# ---------------------------------------------------------------------------
# Word embedding and loss
# ---------------------------------------------------------------------------


class WordEmbedding(nn.Module):
    def __init__(self, vocab_size: int, embed_size: int):
        super().__init__()
        self.W_embed = nn.Parameter(torch.randn(vocab_size, embed_size) / math.sqrt(vocab_size))

    def forward(self, x):
        V = self.W_embed.shape[0]
        one_hot = F.one_hot(x, num_classes=V).to(self.W_embed.dtype)  # (N, T, V)
        out = torch.einsum("ntv,vw->ntw", one_hot, self.W_embed)
        return out


def temporal_softmax_loss(x, y, ignore_index=None):
    N, T, V = x.shape
    log_probs = x - torch.logsumexp(x, dim=2, keepdim=True)  # (N, T, V)
    picked = log_probs.gather(2, y.unsqueeze(2)).squeeze(2)  # (N, T)
    if ignore_index is not None:
        picked = torch.where(y == ignore_index, torch.zeros_like(picked), picked)
    loss = -picked.sum() / N
    return loss


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------


def lstm_gates(xh, W, b, prev_c):
    """
    The LSTM update from the concatenated input [x, h, ...] and the stacked
    weights: each gate from its own column block, i, f, o, g.
    """
    H = prev_c.shape[1]
    i = torch.sigmoid(xh @ W[:, 0 * H : 1 * H] + b[0 * H : 1 * H])
    f = torch.sigmoid(xh @ W[:, 1 * H : 2 * H] + b[1 * H : 2 * H])
    o = torch.sigmoid(xh @ W[:, 2 * H : 3 * H] + b[2 * H : 3 * H])
    g = torch.tanh(xh @ W[:, 3 * H : 4 * H] + b[3 * H : 4 * H])
    next_c = i * g + f * prev_c
    next_h = o * torch.tanh(next_c)
    return next_h, next_c


class LSTM(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c):
        xh = torch.cat([x, prev_h], dim=1)
        W = torch.cat([self.Wx, self.Wh], dim=0)
        next_h, next_c = lstm_gates(xh, W, self.b, prev_c)
        return next_h, next_c

    def forward(self, x, h0):
        N, T, D = x.shape
        h, c = h0, torch.zeros_like(h0)
        hs = []
        for t in range(T):
            h, c = self.step_forward(x[:, t, :], h, c)
            hs.append(h)
        hn = torch.stack(hs, dim=1)
        return hn


# ---------------------------------------------------------------------------
# Attention LSTM
# ---------------------------------------------------------------------------


def dot_product_attention(prev_h, A):
    N, H, _, _ = A.shape
    keys = A.reshape(N, H, 16).permute(0, 2, 1)  # (N, 16, H): one row per location
    query = prev_h / math.sqrt(H)  # scale first
    scores = torch.bmm(keys, query.unsqueeze(2)).squeeze()  # (N, 16)
    scores = scores - scores.max(dim=1, keepdim=True)[0]
    e = torch.exp(scores)
    weights = e / e.sum(dim=1, keepdim=True)  # softmax over the 16 locations
    attn = torch.bmm(weights.unsqueeze(1), keys).squeeze()  # (N, H)
    attn_weights = weights.reshape(N, 4, 4)
    return attn, attn_weights


class AttentionLSTM(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4) / math.sqrt(hidden_dim))
        self.Wattn = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c, attn):
        xha = torch.cat([x, prev_h, attn], dim=1)
        W = torch.cat([self.Wx, self.Wh, self.Wattn], dim=0)
        next_h, next_c = lstm_gates(xha, W, self.b, prev_c)
        return next_h, next_c

    def forward(self, x, A):
        N, T, D = x.shape
        h = A.reshape(A.shape[0], A.shape[1], 16).sum(dim=2) / 16
        c = h
        hs = []
        for t in range(T):
            attn, _ = dot_product_attention(h, A)
            h, c = self.step_forward(x[:, t, :], h, c, attn)
            hs.append(h)
        hn = torch.stack(hs, dim=1)
        return hn


# ---------------------------------------------------------------------------
# Captioning model
# ---------------------------------------------------------------------------


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

        self.encoder = ImageEncoder(pretrained=image_encoder_pretrained, verbose=False)
        self.project_features = nn.Linear(input_dim, hidden_dim)
        self.embed = WordEmbedding(vocab_size, wordvec_dim)
        self.to_scores = nn.Linear(hidden_dim, vocab_size)
        if cell_type == "rnn":
            self.decoder = RNN(wordvec_dim, hidden_dim)
        elif cell_type == "lstm":
            self.decoder = LSTM(wordvec_dim, hidden_dim)
        else:
            self.decoder = AttentionLSTM(wordvec_dim, hidden_dim)

    def project_grid(self, images):
        """The feature projection applied at each of the 16 locations: (N, H, 16)."""
        feats = self.encoder(images)  # (N, 400, 4, 4)
        N, D = feats.shape[0], feats.shape[1]
        W, b = self.project_features.weight, self.project_features.bias  # (H, D), (H,)
        return W @ feats.reshape(N, D, 16) + b.unsqueeze(1)

    def initial_state(self, images):
        """h0 for "rnn"/"lstm"; (A, h0) for "attn"."""
        grid = self.project_grid(images)  # (N, H, 16)
        # The mean of the projected locations is the projection of the mean.
        h0 = grid.sum(dim=2) / 16
        if self.cell_type != "attn":
            return h0
        A = grid.reshape(grid.shape[0], grid.shape[1], 4, 4)
        return A, h0

    def forward(self, images, captions):
        captions_in = captions[:, :-1]
        captions_out = captions[:, 1:]
        x = self.embed(captions_in)
        if self.cell_type == "attn":
            A, _ = self.initial_state(images)
            hn = self.decoder(x, A)
        else:
            hn = self.decoder(x, self.initial_state(images))
        scores = self.to_scores(hn)
        loss = temporal_softmax_loss(scores, captions_out, ignore_index=self.ignore_index)
        return loss

    def sample(self, images, max_length=15):
        N = images.shape[0]
        captions = self._null * images.new(N, max_length).fill_(1).long()
        with torch.no_grad():
            if self.cell_type == "attn":
                A, h = self.initial_state(images)
                c = h
                attn_weights_all = torch.zeros(N, max_length, 4, 4, dtype=A.dtype)
            else:
                h = self.initial_state(images)
                c = torch.zeros_like(h)

            words = torch.full((N, 1), self._start, dtype=torch.long, device=images.device)
            for t in range(max_length):
                x = self.embed(words).squeeze(1)  # (N, W)
                if self.cell_type == "rnn":
                    h = self.decoder.step_forward(x, h)
                elif self.cell_type == "lstm":
                    h, c = self.decoder.step_forward(x, h, c)
                else:
                    attn, weights = dot_product_attention(h, A)
                    attn_weights_all[:, t] = weights.cpu()
                    h, c = self.decoder.step_forward(x, h, c, attn)
                words = self.to_scores(h).argmax(dim=1, keepdim=True)
                captions[:, t] = words[:, 0]

        if self.cell_type == "attn":
            return captions, attn_weights_all
        return captions
