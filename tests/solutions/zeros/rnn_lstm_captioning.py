"""
A module that computes nothing, kept as a test fixture of the grading's floor
(tests/CONTRACT.md): the given code (the image encoder, the greeting) and the
constructors as the assignment has them, and every function a student writes
returning zeros of the right shapes. Graded, it must earn at most the floor.
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
    next_h = torch.zeros_like(prev_h)
    cache = (x, prev_h, Wx, Wh, next_h)
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
    x, prev_h, Wx, Wh, next_h = cache
    dx, dprev_h, dWx, dWh = (torch.zeros_like(t) for t in (x, prev_h, Wx, Wh))
    db = torch.zeros(Wh.shape[0], dtype=Wh.dtype)
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
    h = torch.zeros(x.shape[0], x.shape[1], h0.shape[1], dtype=x.dtype)
    cache = (x, h0, Wx, Wh, b)
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
    x, h0, Wx, Wh, b = cache
    dx, dh0, dWx, dWh, db = (torch.zeros_like(t) for t in (x, h0, Wx, Wh, b))
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
        out = torch.zeros(*x.shape, self.W_embed.shape[1], dtype=self.W_embed.dtype)
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
    loss = x.sum() * 0
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
    next_c = torch.zeros_like(prev_c)
    next_h = torch.zeros_like(prev_c)
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
        next_h, next_c = torch.zeros_like(prev_h), torch.zeros_like(prev_c)
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
        hn = torch.zeros(x.shape[0], x.shape[1], h0.shape[1], dtype=x.dtype)
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
    N, H, Da, _ = A.shape
    attn = torch.zeros(N, H, dtype=A.dtype)
    attn_weights = torch.zeros(N, Da, Da, dtype=A.dtype)
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
        next_h, next_c = torch.zeros_like(prev_h), torch.zeros_like(prev_c)
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
        hn = torch.zeros(x.shape[0], x.shape[1], A.shape[1], dtype=x.dtype)
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

        self.image_encoder = ImageEncoder(pretrained=image_encoder_pretrained, verbose=False)
        self.feat_proj = nn.Linear(input_dim, hidden_dim)
        self.embedding = WordEmbedding(vocab_size, wordvec_dim)
        recurrent = {"rnn": RNN, "lstm": LSTM, "attn": AttentionLSTM}[cell_type]
        self.rnn = recurrent(wordvec_dim, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, vocab_size)

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

        loss = self.output_proj.weight.sum() * 0
        return loss

    def _encode(self, images):
        """
        Inputs:
        - images: (N, 3, H, W)

        Returns:
        - for "rnn" and "lstm": initial hidden state h0, (N, H)
        - for "attn": projected feature grid A, (N, H, Da, Da)
        """
        h0_or_A = None
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

        N = images.shape[0]
        captions = torch.zeros(N, max_length, dtype=torch.long, device=images.device)
        attn_weights_all = torch.zeros(N, max_length, 4, 4)

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
