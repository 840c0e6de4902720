"""
Public checks of the captioning model (see helper/kit/check_tools.py for what
a check may compare with): its greeting, its pieces, the loss of a model
whose output layer is zero (log V per counted word), the shapes of what
`sample` returns, and memorising a few captions: a model whose forward and
sample are right learns 4 captions in a few hundred steps and samples them
back word for word.
"""
import math

import torch

from helper.captioning.checkpoint import ENCODER_CHANNELS
from helper.captioning.features import FeatureLookup, index_images, swap_image_encoder
from helper.captioning.parts import model_parts
from helper.kit.check_tools import CheckFailed, call, captured_stdout, expect_close, expect_tensor, values

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "circle", "blue", "square", "above"]
WORD_TO_IDX = {word: index for index, word in enumerate(WORDS)}
NULL, START, END = 0, 1, 2
# Four captions (N, T + 1) to memorise: <START> ... <END>, then <NULL> padding.
CAPTIONS = torch.tensor([
    [1, 4, 5, 6, 2, 0, 0],
    [1, 7, 8, 2, 0, 0, 0],
    [1, 4, 9, 7, 8, 5, 2],
    [1, 9, 9, 6, 2, 0, 0],
])
RECURRENT = {"rnn": "RNN", "lstm": "LSTM", "attn": "AttentionLSTM"}


def hello(m):
    with captured_stdout() as out:
        call("hello_rnn_lstm_captioning", lambda: m.hello_rnn_lstm_captioning() or "printed")
    if "Hello from rnn_lstm_captioning.py!" not in out.getvalue():
        raise CheckFailed(f"expected it to print 'Hello from rnn_lstm_captioning.py!', got {out.getvalue()!r}")


def _model(m, cell_type: str, hidden_dim: int = 32):
    """A small CaptioningRNN of cell_type, built as the assignment builds it (ignore_index = <NULL>)."""
    torch.manual_seed(0)
    return call(
        "CaptioningRNN", m.CaptioningRNN, WORD_TO_IDX, input_dim=ENCODER_CHANNELS, wordvec_dim=16, hidden_dim=hidden_dim,
        cell_type=cell_type, image_encoder_pretrained=False, ignore_index=NULL,
    )


def _images(n: int) -> torch.Tensor:
    """Fixed uint8 images (n, 3, 112, 112)."""
    return ((values(n, 3, 112, 112, start=0.9) + 1) * 127.5).round().to(torch.uint8)


def _check_pieces(m, model, cell_type: str):
    """The model's pieces are the contract's: found by type, the recurrent one of the right class."""
    try:
        parts = model_parts(model)
    except ValueError as error:
        raise CheckFailed(f"the model's pieces: {error}") from None
    expected = getattr(m, RECURRENT[cell_type])
    if not isinstance(parts.recurrent, expected):
        raise CheckFailed(f"cell_type={cell_type!r}: expected a {expected.__name__}, found {type(parts.recurrent).__name__}")
    return parts


def forward_and_sample(cell_type: str):
    """The check of one cell type's loss with a zero output layer, and of sample's shapes."""
    def check(m):
        model = _model(m, cell_type)
        parts = _check_pieces(m, model, cell_type)
        images, captions = _images(2), CAPTIONS[:2, :6]
        with torch.no_grad():
            parts.output_proj.weight.zero_()
            parts.output_proj.bias.zero_()
            loss = call("CaptioningRNN.forward", model, images, captions)
        counted = int((captions[:, 1:] != NULL).sum())
        expected = torch.tensor(counted / 2 * math.log(len(WORDS)), dtype=torch.float64)
        expect_tensor("loss", loss, ())
        expect_close(f"loss with a zero output layer (log V per counted word: {counted} words, N = 2)",
                     loss, expected, 1e-5)
        model.eval()
        out = call("CaptioningRNN.sample", model.sample, images, max_length=5)
        _check_sample(out, cell_type, n=2, max_length=5)
    return check


def _check_sample(out, cell_type: str, n: int, max_length: int):
    """What sample returns: word indices (n, max_length), and for "attn" the weights on the CPU."""
    if cell_type == "attn":
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed(f"sample of an 'attn' model: expected (captions, attn_weights_all), got {type(out).__name__}")
        out, weights = out
        expect_tensor("attn_weights_all", weights, (n, max_length, 4, 4))
        if weights.device.type != "cpu":
            raise CheckFailed(f"attn_weights_all: expected on the CPU, got {weights.device}")
        expect_close("attn_weights_all summed over the grid", weights.sum(dim=(2, 3)),
                     torch.ones(n, max_length, dtype=torch.float64), 1e-5)
    expect_tensor("captions", out, (n, max_length))
    if out.dtype != torch.int64:
        raise CheckFailed(f"captions: expected int64 word indices, got {out.dtype}")
    if int(out.min()) < 0 or int(out.max()) >= len(WORDS):
        raise CheckFailed(f"captions: expected word indices in [0, {len(WORDS)}), got [{int(out.min())}, {int(out.max())}]")


def _first_words(row: torch.Tensor) -> list:
    """The words of a caption up to and including its first <END>."""
    words = row.tolist()
    return words[: words.index(END) + 1] if END in words else words


def memorise(cell_type: str, steps: int = 300):
    """The check that a model of cell_type memorises CAPTIONS and samples them back."""
    def check(m):
        model = _model(m, cell_type, hidden_dim=64)
        _check_pieces(m, model, cell_type)
        # Distinct fixed features per image stand in for the encoder (as in the notebook's overfitting).
        swap_image_encoder(model, FeatureLookup(values(len(CAPTIONS), ENCODER_CHANNELS, 4, 4, start=2.0).float()))
        images = index_images(torch.arange(len(CAPTIONS)))
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
        model.train()
        for _ in range(steps):
            loss = call("CaptioningRNN.forward", model, images, CAPTIONS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        out = call("CaptioningRNN.sample", model.sample, images, max_length=CAPTIONS.shape[1] - 1)
        generated = out[0] if isinstance(out, tuple) else out
        wrong = [i for i in range(len(CAPTIONS)) if _first_words(generated[i]) != _first_words(CAPTIONS[i, 1:])]
        if wrong:
            i = wrong[0]
            raise CheckFailed(
                f"after {steps} training steps (final loss {float(loss):.3f}) sample gave back {len(CAPTIONS) - len(wrong)} "
                f"of {len(CAPTIONS)} training captions; caption {i}: expected {_first_words(CAPTIONS[i, 1:])}, "
                f"got {generated[i].tolist()}"
            )
    return check


CHECKS = {
    "captioning": [
        ("hello_rnn_lstm_captioning prints its greeting", hello),
        *[(f"CaptioningRNN {c!r}: pieces, loss with a zero output layer, sample's shapes", forward_and_sample(c))
          for c in RECURRENT],
        *[(f"CaptioningRNN {c!r}: memorises 4 captions, sample gives them back", memorise(c)) for c in RECURRENT],
    ],
}
