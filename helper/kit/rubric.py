"""
The assignment's rubric: its graded parts, what each covers, and its points.

One table serves the grading tests (each graded test file belongs to one part,
and the part's points are shared equally among its scored test cases), the
batch grader, and the students' self-check, so that the points are written once.

Points come from what the student wrote: code the assignment gives (the image
encoder, the greeting) is checked but worth nothing, and so is a check that a
module computing nothing could pass (names, shapes, initialisation alone:
`pytest.mark.unscored` in tests/grading).
"""
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Part:
    """One graded part of the assignment."""

    key: str  # the name of the part in test markers, reports and CSV columns
    title: str
    points: float
    api: Tuple[str, ...]  # the public names of rnn_lstm_captioning.py that it grades


PARTS: Tuple[Part, ...] = (
    Part(
        "rnn",
        "Vanilla RNN: step, sequence, backward pass by hand, module",
        20,
        ("rnn_step_forward", "rnn_step_backward", "rnn_forward", "rnn_backward", "RNN"),
    ),
    Part("embedding_loss", "Word embedding and temporal softmax loss", 10, ("WordEmbedding", "temporal_softmax_loss")),
    Part("lstm", "LSTM: step and sequence", 15, ("LSTM",)),
    Part("attention", "Dot-product attention and the attention LSTM", 20, ("dot_product_attention", "AttentionLSTM")),
    # Given code in the standard assignment: checked (a broken copy is worth knowing about), worth nothing.
    Part("encoder", "Image encoder (given code)", 0, ("ImageEncoder",)),
    Part(
        "captioning",
        "Captioning model: loss with teacher forcing, greedy sampling",
        35,
        ("hello_rnn_lstm_captioning", "CaptioningRNN"),
    ),
)

TOTAL_POINTS = sum(part.points for part in PARTS)


def part(key: str) -> Part:
    """The part called key; KeyError naming the known parts otherwise."""
    for candidate in PARTS:
        if candidate.key == key:
            return candidate
    raise KeyError(f"no graded part {key!r}; the parts are {[p.key for p in PARTS]}")
