"""
The pieces of a captioning model, found by their types.

Decoding, training and the checks work with any implementation of the API of
`rnn_lstm_captioning.py` (a student's file, an instructor's reference
solution): `model_parts` finds the model's encoder, embedding, recurrent cell
and projections by their types, not by the names of its attributes.
"""
import inspect
import sys
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional

from torch import nn


@dataclass
class ModelParts:
    """
    The pieces of a CaptioningRNN that decoding needs.

    - encoder: the ImageEncoder
    - embedding: the WordEmbedding
    - recurrent: the RNN, LSTM or AttentionLSTM
    - feature_proj: nn.Linear(encoder.out_channels, H)
    - output_proj: nn.Linear(H, V)
    - cell_type: "rnn", "lstm" or "attn"
    - attention: the module's dot_product_attention(prev_h, A)
    - vocab_size: V
    - null, start: indices of <NULL> and <START>
    - end: index of <END>, or None when the vocabulary has none
    """

    encoder: nn.Module
    embedding: nn.Module
    recurrent: nn.Module
    feature_proj: nn.Linear
    output_proj: nn.Linear
    cell_type: str
    attention: Callable
    vocab_size: int
    null: int
    start: int
    end: Optional[int]


# What the module of a captioning model must define, and the cell type that
# each recurrent class gives. AttentionLSTM comes first in case an
# implementation derives it from LSTM.
_REQUIRED_NAMES = ("ImageEncoder", "WordEmbedding", "RNN", "LSTM", "AttentionLSTM", "dot_product_attention")
_CELL_TYPES = (("AttentionLSTM", "attn"), ("LSTM", "lstm"), ("RNN", "rnn"))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _module_namespace(model: nn.Module) -> dict:
    """
    The global names of the file that defines the model's class (or, for a
    subclass defined elsewhere, of the nearest base class whose file defines
    the API's classes).

    The globals of a class's own functions are its file's namespace even
    when sys.modules has since been given another module of the same name
    (the test suite loads implementations from arbitrary paths); for a class
    without functions, sys.modules[cls.__module__] is used.
    """
    namespaces = []
    for cls in type(model).__mro__:
        functions = [a for a in vars(cls).values() if inspect.isfunction(a)]
        if functions:
            namespaces.append(functions[0].__globals__)
        elif cls.__module__ in sys.modules:
            namespaces.append(vars(sys.modules[cls.__module__]))
    for namespace in namespaces:
        if all(name in namespace for name in _REQUIRED_NAMES):
            return namespace
    return namespaces[0] if namespaces else {}


def _only(found: list, what: str, model: nn.Module):
    """The single element of found; ValueError when there are none or several."""
    if len(found) != 1:
        raise ValueError(f"expected exactly one {what} in the {type(model).__name__}; found {len(found)}")
    return found[0]


def _projections(linears: List[nn.Linear], in_channels: int, vocab_size: int, model: nn.Module):
    """
    Tell the feature projection (in_channels -> H) from the output projection
    (H -> V) by their shapes.

    Returns:
    - (feature_proj, output_proj)
    """
    pairs = [
        (f, o)
        for f in linears
        for o in linears
        if f is not o and f.in_features == in_channels and o.out_features == vocab_size
        and f.out_features == o.in_features
    ]
    if len(pairs) != 1:
        shapes = [(layer.in_features, layer.out_features) for layer in linears]
        raise ValueError(
            f"expected one nn.Linear({in_channels}, H) feature projection and one nn.Linear(H, {vocab_size}) "
            f"output projection in the {type(model).__name__}; found nn.Linear layers of (in, out) sizes {shapes}, "
            f"which give {len(pairs)} such pairs"
        )
    return pairs[0]


def model_parts(model: nn.Module) -> ModelParts:
    """
    Find the pieces of a CaptioningRNN by their types.

    The classes are those of the file that defines type(model), so a
    swapped-in implementation is read with its own ImageEncoder, RNN, ...;
    the names of the model's attributes do not matter. The two nn.Linear
    layers are told apart by their shapes.

    Inputs:
    - model: a CaptioningRNN (also inside DistributedDataParallel or
      torch.compile); it must keep its vocabulary in `word_to_idx`, as the
      assignment's starter code does

    Returns:
    - a ModelParts

    Raises ValueError when a piece is missing or ambiguous.
    """
    model = unwrap_model(model)
    namespace = _module_namespace(model)
    missing = [name for name in _REQUIRED_NAMES if name not in namespace]
    if missing:
        raise ValueError(
            f"the module that defines {type(model).__name__} ({type(model).__module__}) lacks {missing}; "
            f"expected an implementation of the rnn_lstm_captioning API"
        )

    encoder = _only([m for m in model.modules() if isinstance(m, namespace["ImageEncoder"])], "ImageEncoder", model)
    # The encoder's own layers (RegNet convolutions, ...) are not decoder pieces.
    inside_encoder = {id(m) for m in encoder.modules()}
    decoder_modules = [m for m in model.modules() if id(m) not in inside_encoder]

    embedding = _only(
        [m for m in decoder_modules if isinstance(m, namespace["WordEmbedding"])], "WordEmbedding", model
    )
    recurrents = []
    for module in decoder_modules:
        for class_name, cell_type in _CELL_TYPES:
            if isinstance(module, namespace[class_name]):
                recurrents.append((module, cell_type))
                break
    recurrent, cell_type = _only(recurrents, "recurrent module (RNN, LSTM or AttentionLSTM)", model)

    word_to_idx = getattr(model, "word_to_idx", None)
    if not isinstance(word_to_idx, Mapping):
        raise ValueError(f"the {type(model).__name__} must keep its vocabulary in a dict attribute word_to_idx")
    for token in ("<NULL>", "<START>"):
        if token not in word_to_idx:
            raise ValueError(f"decoding needs the token {token!r} in the model's word_to_idx")
    vocab_size = len(word_to_idx)

    linears = [m for m in decoder_modules if isinstance(m, nn.Linear)]
    feature_proj, output_proj = _projections(linears, encoder.out_channels, vocab_size, model)
    return ModelParts(
        encoder=encoder,
        embedding=embedding,
        recurrent=recurrent,
        feature_proj=feature_proj,
        output_proj=output_proj,
        cell_type=cell_type,
        attention=namespace["dot_product_attention"],
        vocab_size=vocab_size,
        null=word_to_idx["<NULL>"],
        start=word_to_idx["<START>"],
        end=word_to_idx.get("<END>"),
    )
