"""
Image captioning with a vanilla RNN, an LSTM and an attention LSTM.

The decoders read the spatial features of a RegNetX-400MF image encoder and
generate a caption one word at a time, in the line of "Show and Tell"
(Vinyals et al., 2015) and "Show, Attend and Tell" (Xu et al., 2015).

Shapes used throughout:
    N  batch size            T  number of time steps
    D  input size            H  hidden size
    V  vocabulary size       W  word-vector size
    Da side of the square grid of image features (4 for 112x112 images)

Code between "# BEGIN SOLUTION" and "# END SOLUTION" is what a student writes;
the student kit replaces it with `raise NotImplementedError`.
"""
import math
from typing import Dict, Optional, Tuple

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
# Vanilla RNN, forward and backward by hand
# ---------------------------------------------------------------------------


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """
    One time step of a vanilla RNN with a tanh activation:
        next_h = tanh(x Wx + prev_h Wh + b)

    Inputs:
    - x: input, (N, D)
    - prev_h: hidden state of the previous step, (N, H)
    - Wx: input-to-hidden weights, (D, H)
    - Wh: hidden-to-hidden weights, (H, H)
    - b: biases, (H,)

    Returns a tuple of:
    - next_h: next hidden state, (N, H)
    - cache: what the backward pass needs
    """
    # BEGIN SOLUTION
    # HINT: TODO: one step of the vanilla RNN.
    # HINT: 1. The pre-activation, (N, H): x times Wx, plus prev_h times Wh, plus b (matrix products: @).
    # HINT: 2. next_h is its tanh (torch.tanh).
    # HINT: 3. cache: a tuple of what rnn_step_backward needs (the inputs, the weights, and next_h).
    next_h = torch.tanh(x @ Wx + prev_h @ Wh + b)
    cache = (x, prev_h, Wx, Wh, next_h)
    # END SOLUTION
    return next_h, cache


def rnn_step_backward(dnext_h, cache):
    """
    Backward pass of one time step of a vanilla RNN.

    Inputs:
    - dnext_h: gradient of the loss with respect to next_h, (N, H)
    - cache: from rnn_step_forward

    Returns a tuple of:
    - dx: gradient of the input, (N, D)
    - dprev_h: gradient of the previous hidden state, (N, H)
    - dWx: gradient of the input-to-hidden weights, (D, H)
    - dWh: gradient of the hidden-to-hidden weights, (H, H)
    - db: gradient of the biases, (H,)
    """
    # BEGIN SOLUTION
    # HINT: TODO: the backward pass of one RNN step, by hand (no autograd).
    # HINT: 1. Unpack what rnn_step_forward put in cache.
    # HINT: 2. The gradient of the pre-activation a, (N, H): dnext_h times the derivative of tanh at a,
    # HINT:    which is 1 - tanh(a)^2, and tanh(a) is next_h.
    # HINT: 3. x, prev_h, Wx and Wh enter a through matrix products: the gradient of each factor is the
    # HINT:    gradient of a multiplied by the transpose of the other factor. Check the shapes:
    # HINT:    dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H).
    # HINT: 4. b is added to every row of the batch: db is the gradient of a summed over the batch, (H,).
    x, prev_h, Wx, Wh, next_h = cache
    # d tanh(a) / da = 1 - tanh(a)^2, and tanh(a) is next_h itself.
    da = dnext_h * (1 - next_h**2)
    dx = da @ Wx.t()
    dprev_h = da @ Wh.t()
    dWx = x.t() @ da
    dWh = prev_h.t() @ da
    db = da.sum(dim=0)
    # END SOLUTION
    return dx, dprev_h, dWx, dWh, db


def rnn_forward(x, h0, Wx, Wh, b):
    """
    A vanilla RNN over a whole sequence, one rnn_step_forward per step.

    Inputs:
    - x: input sequence, (N, T, D)
    - h0: initial hidden state, (N, H)
    - Wx: input-to-hidden weights, (D, H)
    - Wh: hidden-to-hidden weights, (H, H)
    - b: biases, (H,)

    Returns a tuple of:
    - h: hidden states of all time steps, (N, T, H)
    - cache: what the backward pass needs
    """
    # BEGIN SOLUTION
    # HINT: TODO: run rnn_step_forward over the T time steps.
    # HINT: 1. Start from h0; at step t feed x[:, t], (N, D), and the hidden state of the previous step.
    # HINT: 2. Keep every next_h and every step's cache.
    # HINT: 3. h: the hidden states stacked along dim 1 (torch.stack), (N, T, H);
    # HINT:    cache: what rnn_backward needs, for example the list of the step caches.
    T = x.shape[1]
    prev_h = h0
    hs, step_caches = [], []
    for t in range(T):
        prev_h, step_cache = rnn_step_forward(x[:, t], prev_h, Wx, Wh, b)
        hs.append(prev_h)
        step_caches.append(step_cache)
    h = torch.stack(hs, dim=1)
    cache = step_caches
    # END SOLUTION
    return h, cache


def rnn_backward(dh, cache):
    """
    Backward pass of a vanilla RNN over a whole sequence.

    Inputs:
    - dh: upstream gradients of all hidden states, (N, T, H). (The gradient
      that reaches h_t also flows back through h_{t+1}, ..., h_T.)
    - cache: from rnn_forward

    Returns a tuple of:
    - dx: gradient of the inputs, (N, T, D)
    - dh0: gradient of the initial hidden state, (N, H)
    - dWx: gradient of the input-to-hidden weights, (D, H)
    - dWh: gradient of the hidden-to-hidden weights, (H, H)
    - db: gradient of the biases, (H,)
    """
    # BEGIN SOLUTION
    # HINT: TODO: backpropagation through time, with rnn_step_backward.
    # HINT: 1. Walk the steps backwards, t = T - 1, ..., 0.
    # HINT: 2. The gradient that reaches h_t is dh[:, t] plus the gradient of h_t that step t + 1 passed
    # HINT:    back as its dprev_h (nothing at the last step).
    # HINT: 3. Call rnn_step_backward with that sum and the cache of step t; keep its dx_t, and add up
    # HINT:    its dWx, dWh and db over all the steps.
    # HINT: 4. dx: the dx_t stacked along dim 1, (N, T, D); dh0: the dprev_h of step 0, (N, H).
    T = dh.shape[1]
    dxs = [None] * T
    dprev_h = torch.zeros_like(dh[:, 0])
    dWx = dWh = db = 0
    for t in reversed(range(T)):
        # h_t gets gradient from the loss at step t and from step t + 1.
        dx_t, dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dh[:, t] + dprev_h, cache[t])
        dxs[t] = dx_t
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    dx = torch.stack(dxs, dim=1)
    dh0 = dprev_h
    # END SOLUTION
    return dx, dh0, dWx, dWh, db


class RNN(nn.Module):
    """
    A vanilla RNN layer; autograd differentiates through rnn_forward.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        """
        Inputs:
        - input_dim: input size D
        - hidden_dim: hidden size H
        """
        super().__init__()
        # Scaling by 1/sqrt(fan-in) keeps the pre-activations of order one.
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x, h0):
        """
        Inputs:
        - x: input sequence, (N, T, D)
        - h0: initial hidden state, (N, H)

        Returns:
        - hn: hidden states of all time steps, (N, T, H)
        """
        hn, _ = rnn_forward(x, h0, self.Wx, self.Wh, self.b)
        return hn

    def step_forward(self, x, prev_h):
        """
        Inputs:
        - x: input, (N, D)
        - prev_h: previous hidden state, (N, H)

        Returns:
        - next_h: next hidden state, (N, H)
        """
        next_h, _ = rnn_step_forward(x, prev_h, self.Wx, self.Wh, self.b)
        return next_h


# ---------------------------------------------------------------------------
# Word embedding and loss
# ---------------------------------------------------------------------------


class WordEmbedding(nn.Module):
    """
    Turns word indices into word vectors by looking them up in a table.
    """

    def __init__(self, vocab_size: int, embed_size: int):
        """
        Inputs:
        - vocab_size: number of words V
        - embed_size: size W of a word vector
        """
        super().__init__()
        self.W_embed = nn.Parameter(torch.randn(vocab_size, embed_size) / math.sqrt(vocab_size))

    def forward(self, x):
        """
        Inputs:
        - x: word indices, integer (N, T), each in [0, V)

        Returns:
        - out: word vectors, (N, T, W)
        """
        # BEGIN SOLUTION
        # HINT: TODO: look up the word vectors.
        # HINT: 1. Row i of the table self.W_embed, (V, W), is the vector of word i.
        # HINT: 2. Index the table with x, (N, T), to get (N, T, W): integer-tensor indexing does it at once,
        # HINT:    without a loop.
        out = self.W_embed[x]
        # END SOLUTION
        return out


def temporal_softmax_loss(x, y, ignore_index=None):
    """
    Softmax cross-entropy at every time step of a sequence, summed over time
    and averaged over the batch.

    Inputs:
    - x: scores over the vocabulary, (N, T, V)
    - y: target word indices, integer (N, T), each in [0, V)
    - ignore_index: targets equal to it (usually <NULL> padding) add nothing

    Returns:
    - loss: scalar tensor
    """
    # BEGIN SOLUTION
    # HINT: TODO: the cross-entropy at every step, summed over time, averaged over the batch.
    # HINT: 1. Flatten the scores to (N * T, V) and the targets to (N * T,).
    # HINT: 2. Sum the cross-entropy of every (sample, step) with F.cross_entropy(..., reduction="sum");
    # HINT:    targets equal to ignore_index must add nothing (F.cross_entropy has an argument for that;
    # HINT:    when ignore_index is None nothing is ignored).
    # HINT: 3. Divide the sum by N, the batch size, and return the scalar tensor.
    N, T, V = x.shape
    loss = F.cross_entropy(
        x.reshape(N * T, V),
        y.reshape(N * T),
        ignore_index=-100 if ignore_index is None else ignore_index,
        reduction="sum",
    )
    loss = loss / N
    # END SOLUTION
    return loss


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------


def lstm_cell(a, prev_c):
    """
    The LSTM update, given the pre-activations of its four gates.

    Inputs:
    - a: gate pre-activations, (N, 4H), in the order input i, forget f,
      output o, block input g
    - prev_c: previous cell state, (N, H)

    Returns a tuple of:
    - next_h: next hidden state, (N, H)
    - next_c: next cell state, (N, H)
    """
    # BEGIN SOLUTION
    # HINT: TODO: the LSTM update from the gate pre-activations (used by LSTM and AttentionLSTM).
    # HINT: 1. Split a, (N, 4H), into four (N, H) blocks, in the order i, f, o, g (for example with chunk).
    # HINT: 2. i, f and o are the sigmoid of their blocks (torch.sigmoid); g is the tanh of its block.
    # HINT: 3. The new cell state is f * c_{t-1} + i * g; the new hidden state is o * tanh(c_t).
    ai, af, ao, ag = a.chunk(4, dim=1)
    i, f, o = torch.sigmoid(ai), torch.sigmoid(af), torch.sigmoid(ao)
    g = torch.tanh(ag)
    next_c = f * prev_c + i * g
    next_h = o * torch.tanh(next_c)
    # END SOLUTION
    return next_h, next_c


class LSTM(nn.Module):
    """
    A long short-term memory layer (Hochreiter and Schmidhuber, 1997).
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        """
        Inputs:
        - input_dim: input size D
        - hidden_dim: hidden size H
        """
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c):
        """
        One time step of the LSTM.

        Inputs:
        - x: input, (N, D)
        - prev_h: previous hidden state, (N, H)
        - prev_c: previous cell state, (N, H)

        Returns a tuple of:
        - next_h: next hidden state, (N, H)
        - next_c: next cell state, (N, H)
        """
        # BEGIN SOLUTION
        # HINT: TODO: one LSTM step.
        # HINT: 1. The gate pre-activations, (N, 4H): x times self.Wx, plus prev_h times self.Wh, plus self.b.
        # HINT: 2. Turn them into next_h and next_c with lstm_cell (above).
        a = x @ self.Wx + prev_h @ self.Wh + self.b
        next_h, next_c = lstm_cell(a, prev_c)
        # END SOLUTION
        return next_h, next_c

    def forward(self, x, h0):
        """
        The LSTM over a whole sequence; the initial cell state is zero.

        Inputs:
        - x: input sequence, (N, T, D)
        - h0: initial hidden state, (N, H)

        Returns:
        - hn: hidden states of all time steps, (N, T, H)
        """
        # BEGIN SOLUTION
        # HINT: TODO: the LSTM over the whole sequence.
        # HINT: 1. Start from h0 and a cell state of zeros of the same shape (torch.zeros_like).
        # HINT: 2. At every step t, run self.step_forward on x[:, t] and keep the new hidden state.
        # HINT: 3. hn: the hidden states stacked along dim 1, (N, T, H).
        prev_h, prev_c = h0, torch.zeros_like(h0)
        hs = []
        # unbind splits x once; indexing x[:, t] at every step would make the
        # backward pass build a full-size zero gradient of x T times. (One
        # product x @ Wx for all steps before the loop gains little on a CPU,
        # and for large N and H, whose (N, T, 4H) result leaves the cache, the
        # step-by-step loop is faster: python -m helper.bench recurrent.)
        for x_t in x.unbind(dim=1):
            prev_h, prev_c = self.step_forward(x_t, prev_h, prev_c)
            hs.append(prev_h)
        hn = torch.stack(hs, dim=1)
        # END SOLUTION
        return hn


# ---------------------------------------------------------------------------
# Attention LSTM
# ---------------------------------------------------------------------------


def dot_product_attention(prev_h, A):
    """
    Scaled dot-product attention over a square grid of feature vectors.

    Inputs:
    - prev_h: hidden state of the previous step, the query, (N, H)
    - A: projected image features, keys and values, (N, H, Da, Da)

    Returns a tuple of:
    - attn: attention-weighted sum of the feature vectors, (N, H)
    - attn_weights: attention weights, (N, Da, Da), summing to one over the grid
    """
    # BEGIN SOLUTION
    # HINT: TODO: scaled dot-product attention over the Da x Da grid of locations.
    # HINT: 1. Read N, H and Da from A.shape, and flatten the grid: (N, H, Da * Da), one H-vector per location.
    # HINT: 2. The scores, (N, Da * Da): the dot product of prev_h with every location vector, divided by
    # HINT:    sqrt(H); a batched matrix product (torch.bmm) with prev_h as (N, 1, H) computes them all.
    # HINT: 3. The weights: the softmax of the scores over the locations.
    # HINT: 4. attn, (N, H): the location vectors weighted by the weights and summed (torch.bmm again).
    # HINT: 5. Return attn and the weights reshaped to (N, Da, Da).
    N, H, Da, _ = A.shape
    A_flat = A.reshape(N, H, Da * Da)  # (N, H, L): one H-vector per location
    # Dividing by sqrt(H) keeps the scores' scale independent of H, so the
    # softmax does not saturate for large hidden sizes.
    scores = torch.bmm(prev_h.unsqueeze(1), A_flat).squeeze(1) / math.sqrt(H)  # (N, L)
    weights = torch.softmax(scores, dim=1)  # (N, L)
    attn = torch.bmm(A_flat, weights.unsqueeze(2)).squeeze(2)  # (N, H)
    attn_weights = weights.reshape(N, Da, Da)
    # END SOLUTION
    return attn, attn_weights


class AttentionLSTM(nn.Module):
    """
    An LSTM whose gates also see an attention summary of the image features.
    """

    def __init__(self, input_dim: int, hidden_dim: int):
        """
        Inputs:
        - input_dim: input size D
        - hidden_dim: hidden size H
        """
        super().__init__()
        self.Wx = nn.Parameter(torch.randn(input_dim, hidden_dim * 4) / math.sqrt(input_dim))
        self.Wh = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4) / math.sqrt(hidden_dim))
        self.Wattn = nn.Parameter(torch.randn(hidden_dim, hidden_dim * 4) / math.sqrt(hidden_dim))
        self.b = nn.Parameter(torch.zeros(hidden_dim * 4))

    def step_forward(self, x, prev_h, prev_c, attn):
        """
        One time step of the attention LSTM.

        Inputs:
        - x: input, (N, D)
        - prev_h: previous hidden state, (N, H)
        - prev_c: previous cell state, (N, H)
        - attn: attention summary of the image features, (N, H)

        Returns a tuple of:
        - next_h: next hidden state, (N, H)
        - next_c: next cell state, (N, H)
        """
        # BEGIN SOLUTION
        # HINT: TODO: one step of the attention LSTM.
        # HINT: 1. The gate pre-activations as in LSTM.step_forward, plus attn times self.Wattn.
        # HINT: 2. Turn them into next_h and next_c with lstm_cell.
        a = x @ self.Wx + prev_h @ self.Wh + attn @ self.Wattn + self.b
        next_h, next_c = lstm_cell(a, prev_c)
        # END SOLUTION
        return next_h, next_c

    def forward(self, x, A):
        """
        The attention LSTM over a whole sequence. The initial hidden and cell
        states are the image features averaged over the grid.

        Inputs:
        - x: input sequence, (N, T, D)
        - A: projected image features, (N, H, Da, Da)

        Returns:
        - hn: hidden states of all time steps, (N, T, H)
        """
        # BEGIN SOLUTION
        # HINT: TODO: the attention LSTM over the whole sequence.
        # HINT: 1. The initial hidden and cell states are both the mean of A over its grid (dims 2 and 3), (N, H).
        # HINT: 2. At every step t: the attention of the previous hidden state, dot_product_attention(prev_h, A),
        # HINT:    then one step (self.step_forward) on x[:, t] with that attn; keep the new hidden state.
        # HINT: 3. hn: the hidden states stacked along dim 1, (N, T, H).
        prev_h = prev_c = A.mean(dim=(2, 3))
        hs = []
        for x_t in x.unbind(dim=1):
            attn, _ = dot_product_attention(prev_h, A)
            prev_h, prev_c = self.step_forward(x_t, prev_h, prev_c, attn)
            hs.append(prev_h)
        hn = torch.stack(hs, dim=1)
        # END SOLUTION
        return hn


# ---------------------------------------------------------------------------
# Captioning model
# ---------------------------------------------------------------------------


class CaptioningRNN(nn.Module):
    """
    Generates captions from images with a recurrent decoder.

    The image encoder gives c5 features (N, input_dim, 4, 4). For "rnn" and
    "lstm" their spatial mean, projected to H, is the initial hidden state;
    for "attn" the projection at every location gives the grid A that the
    decoder attends over. Words are embedded into W-vectors, the decoder
    gives H-vectors, and a linear layer turns those into scores over the
    vocabulary.
    """

    def __init__(
        self,
        word_to_idx: Dict[str, int],
        input_dim: int = 512,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        cell_type: str = "rnn",
        image_encoder_pretrained: bool = True,
        ignore_index: Optional[int] = None,
    ):
        """
        Inputs:
        - word_to_idx: vocabulary, word -> index in [0, V); must hold "<NULL>",
          and "<START>" and "<END>" for sampling
        - input_dim: channels D of the image features (400 for RegNetX-400MF)
        - wordvec_dim: size W of a word vector
        - hidden_dim: hidden size H of the decoder
        - cell_type: "rnn", "lstm" or "attn"
        - image_encoder_pretrained: load ImageNet weights into the encoder
        - ignore_index: target index that the loss ignores (usually <NULL>)
        """
        super().__init__()
        if cell_type not in {"rnn", "lstm", "attn"}:
            raise ValueError(f'Invalid cell_type "{cell_type}": expected one of "rnn", "lstm", "attn"')
        if "<NULL>" not in word_to_idx:
            raise ValueError(
                f"word_to_idx must contain the padding token '<NULL>'; "
                f"got a vocabulary of {len(word_to_idx)} words without it"
            )
        self.cell_type = cell_type
        self.word_to_idx = word_to_idx
        self.idx_to_word = {i: w for w, i in word_to_idx.items()}
        vocab_size = len(word_to_idx)

        self._null = word_to_idx["<NULL>"]
        self._start = word_to_idx.get("<START>", None)
        self._end = word_to_idx.get("<END>", None)
        self.ignore_index = ignore_index

        # BEGIN SOLUTION
        # HINT: TODO: create the model's pieces; they hold all of its parameters (add no others).
        # HINT: 1. self.image_encoder: ImageEncoder with pretrained=image_encoder_pretrained and verbose=False.
        # HINT: 2. self.feat_proj: nn.Linear from input_dim to hidden_dim, for the image features
        # HINT:    (self._encode, which you write below, uses these two).
        # HINT: 3. self.embedding: WordEmbedding of vocab_size words of size wordvec_dim.
        # HINT: 4. self.rnn: RNN, LSTM or AttentionLSTM, as cell_type says, from wordvec_dim to hidden_dim.
        # HINT: 5. self.output_proj: nn.Linear from hidden_dim to vocab_size, hidden states to word scores.
        self.image_encoder = ImageEncoder(pretrained=image_encoder_pretrained, verbose=False)
        self.feat_proj = nn.Linear(input_dim, hidden_dim)
        self.embedding = WordEmbedding(vocab_size, wordvec_dim)
        recurrent = {"rnn": RNN, "lstm": LSTM, "attn": AttentionLSTM}[cell_type]
        self.rnn = recurrent(wordvec_dim, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, vocab_size)
        # END SOLUTION

    def forward(self, images, captions):
        """
        Training-time loss, with teacher forcing: the decoder reads the
        ground-truth words and is scored on predicting each next word.

        Inputs:
        - images: (N, 3, H, W), uint8 in [0, 255] or float in [0, 1]
        - captions: ground-truth captions, integer (N, T + 1), each starting
          with <START>

        Returns:
        - loss: scalar tensor
        """
        self._check_images(images)
        self._check_captions(captions, images.shape[0])
        captions = captions.long()  # int32, uint8, ...: indexing and the loss need int64
        # The input at step t is word t and the target is word t + 1.
        captions_in = captions[:, :-1]
        captions_out = captions[:, 1:]

        # BEGIN SOLUTION
        # HINT: TODO: the training loss, with teacher forcing.
        # HINT: 1. self._encode(images) (you write it below) gives h0, (N, H), for "rnn" and "lstm", and
        # HINT:    the grid A, (N, H, 4, 4), for "attn": either is what self.rnn takes after the word vectors.
        # HINT: 2. Embed captions_in: (N, T, W).
        # HINT: 3. Run self.rnn over the word vectors: (N, T, H).
        # HINT: 4. The scores over the vocabulary, from self.output_proj: (N, T, V).
        # HINT: 5. loss: temporal_softmax_loss of the scores against captions_out, with self.ignore_index.
        h0_or_A = self._encode(images)
        x = self.embedding(captions_in)  # (N, T, W)
        h = self.rnn(x, h0_or_A)  # (N, T, H)
        scores = self.output_proj(h)  # (N, T, V)
        loss = temporal_softmax_loss(scores, captions_out, ignore_index=self.ignore_index)
        # END SOLUTION
        return loss

    def _encode(self, images):
        """
        Inputs:
        - images: (N, 3, H, W)

        Returns:
        - for "rnn" and "lstm": initial hidden state h0, (N, H)
        - for "attn": projected feature grid A, (N, H, Da, Da)
        """
        # BEGIN SOLUTION
        # HINT: TODO: what the decoder sees of the images.
        # HINT: 1. The c5 features of the images from your image encoder, (N, D, Da, Da).
        # HINT: 2. "rnn" and "lstm": average them over the grid, (N, D), and project them with your
        # HINT:    feature projection (nn.Linear(D, H)): h0, (N, H).
        # HINT: 3. "attn": project every location's D-vector with the same nn.Linear. An nn.Linear acts on
        # HINT:    the last axis: move the channels last (permute), project, and move them back: A, (N, H, Da, Da).
        features = self.image_encoder(images)  # (N, D, Da, Da)
        if self.cell_type == "attn":
            # Project each location's D-vector with the same linear layer.
            A = self.feat_proj(features.permute(0, 2, 3, 1))  # (N, Da, Da, H)
            h0_or_A = A.permute(0, 3, 1, 2)
        else:
            h0_or_A = self.feat_proj(features.mean(dim=(2, 3)))
        # END SOLUTION
        return h0_or_A

    @torch.no_grad()
    def sample(self, images, max_length=15):
        """
        Greedy decoding: start from <START> and feed back the most likely
        word at every step.

        Inputs:
        - images: (N, 3, H, W), uint8 in [0, 255] or float in [0, 1]
        - max_length: number of words to generate

        Returns:
        - captions: word indices, int64 (N, max_length); captions[:, 0] is
          the first generated word (not <START>)
        - for "attn" also attn_weights_all: (N, max_length, Da, Da) on the CPU,
          the attention weights used to generate each word
        """
        self._check_images(images)
        if self._start is None:
            raise ValueError("sample() needs the token '<START>' in word_to_idx")
        N = images.shape[0]
        captions = torch.full((N, max_length), self._null, dtype=torch.long, device=images.device)
        attn_weights_all = None

        # BEGIN SOLUTION
        # HINT: TODO: greedy decoding, one word at a time.
        # HINT: 1. Encode the images with self._encode. For "rnn" and "lstm" it gives h, and the cell state c
        # HINT:    starts at zeros; for "attn" it gives A, h and c both start at the mean of A over its grid,
        # HINT:    and attn_weights_all is zeros of shape (N, max_length, Da, Da) on the CPU.
        # HINT: 2. The first input is the word <START> (self._start) for every image: (N,) word indices.
        # HINT: 3. At every step t: embed the current words into (N, W) vectors; run one step of self.rnn
        # HINT:    (step_forward); for "attn" first compute attn and its weights with dot_product_attention(h, A)
        # HINT:    and store the weights in attn_weights_all[:, t]; the scores are self.output_proj(h), (N, V).
        # HINT: 4. The next word is the argmax of the scores: write it to captions[:, t] and feed it in next.
        h0_or_A = self._encode(images)
        if self.cell_type == "attn":
            A = h0_or_A
            h = c = A.mean(dim=(2, 3))
            attn_weights_all = torch.zeros(N, max_length, A.shape[2], A.shape[3], dtype=A.dtype)
        else:
            h = h0_or_A
            c = torch.zeros_like(h)
        word = torch.full((N,), self._start, dtype=torch.long, device=images.device)
        for t in range(max_length):
            x = self.embedding(word.unsqueeze(1)).squeeze(1)  # (N, W)
            if self.cell_type == "rnn":
                h = self.rnn.step_forward(x, h)
            elif self.cell_type == "lstm":
                h, c = self.rnn.step_forward(x, h, c)
            else:
                attn, attn_weights = dot_product_attention(h, A)
                h, c = self.rnn.step_forward(x, h, c, attn)
                attn_weights_all[:, t] = attn_weights.cpu()
            word = self.output_proj(h).argmax(dim=1)
            captions[:, t] = word
        # END SOLUTION

        if self.cell_type == "attn":
            return captions, attn_weights_all
        return captions

    def _check_images(self, images):
        """Raise a ValueError unless images is an image batch (N, 3, H, W)."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor of shape (N, 3, H, W); got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W); got {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be uint8 in [0, 255] or float in [0, 1]; got dtype {images.dtype}")
        if images.shape[2] < 32 or images.shape[3] < 32:
            raise ValueError(
                f"images must be at least 32x32 (the encoder downsamples 32 times); "
                f"got {images.shape[2]}x{images.shape[3]}"
            )

    def _check_captions(self, captions, num_images):
        """Raise a ValueError unless captions is (N, T + 1) word indices in [0, V)."""
        if not isinstance(captions, torch.Tensor):
            raise ValueError(f"captions must be a torch.Tensor of word indices; got {type(captions).__name__}")
        if captions.dtype.is_floating_point or captions.dtype.is_complex or captions.dtype == torch.bool:
            raise ValueError(f"captions must hold integer word indices; got dtype {captions.dtype}")
        if captions.dim() != 2 or captions.shape[1] < 2:
            raise ValueError(
                f"captions must have shape (N, T + 1) with T + 1 >= 2 (a start word and a target); "
                f"got {tuple(captions.shape)}"
            )
        if captions.shape[0] != num_images:
            raise ValueError(f"got {num_images} images but {captions.shape[0]} captions")
        vocab_size = len(self.word_to_idx)
        low, high = int(captions.min()), int(captions.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"captions must hold word indices in [0, {vocab_size}); got values in [{low}, {high}]"
            )
