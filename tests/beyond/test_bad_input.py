"""
CaptioningRNN, the public entry point, rejects bad input with a ValueError
that says what was expected and what came.

The model runs in its worker (tests/_grading.py): an error it raises comes
back as a RemoteError carrying the exception's type name and message.
"""

import re

import pytest
import torch

from _grading import (
    FLOAT_DTYPES,
    ENCODER_CHANNELS,
    WORD_TO_IDX,
    api,
    expect,
    forward,
    Lazy,
    make_model,
    random_captions,
    random_images,
)
from helper.grading.remote import RemoteError, WorkerLost

V = len(WORD_TO_IDX)


@pytest.fixture(scope="module")
def model(impl):
    return Lazy(lambda: make_model(impl, "rnn"))


def mentions_numbers(message: str, numbers) -> bool:
    """Whether message holds the numbers in order, separated by non-digits, like a printed shape."""
    pattern = r"(?<![\d])" + r"\D+".join(str(n) for n in numbers) + r"(?![\d])"
    return re.search(pattern, message) is not None


def value_error_of(label: str, func, *args, **kwargs) -> str:
    """The message of the ValueError that func(*args), a piece of the API called label, must raise in the worker."""
    try:
        func(*args, **kwargs)
    except RemoteError as error:
        if error.type_name != "ValueError":
            inside = f" in {error.where}" if error.where else ""
            pytest.fail(f"{label} raised {error.type_name}{inside}: {error.message}; expected a ValueError",
                        pytrace=False)
        return error.message
    except WorkerLost as error:
        pytest.fail(f"{label}: {error}", pytrace=False)
    pytest.fail(f"{label} raised no ValueError", pytrace=False)


def test_unknown_cell_type_is_a_value_error_naming_it(impl):
    message = value_error_of(
        "CaptioningRNN",
        api(impl, "CaptioningRNN"),
        WORD_TO_IDX,
        input_dim=ENCODER_CHANNELS,
        cell_type="gru",
        image_encoder_pretrained=False,
    )
    expect("gru" in message, f"the error must name the cell_type that came; got {message!r}")
    expect(
        all(name in message for name in ("rnn", "lstm", "attn")),
        f"the error must list the valid cell types; got {message!r}",
    )


def test_vocabulary_without_null_is_a_value_error(impl):
    words = {w: i for w, i in WORD_TO_IDX.items() if w != "<NULL>"}
    message = value_error_of(
        "CaptioningRNN", api(impl, "CaptioningRNN"), words, input_dim=ENCODER_CHANNELS, image_encoder_pretrained=False
    )
    expect("<NULL>" in message, f"the error must say that <NULL> is missing; got {message!r}")


@pytest.mark.parametrize(
    "shape", [(2, 64, 64), (2, 1, 64, 64), (2, 64, 64, 3)], ids=["3d", "1-channel", "channels-last"]
)
def test_images_of_the_wrong_shape_are_a_value_error_showing_the_shape(impl, model, shape):
    images = torch.zeros(shape, dtype=torch.uint8)
    for name, func, args in [
        ("CaptioningRNN.forward", model.get(), (images, random_captions(2, 4))),
        ("CaptioningRNN.sample", model.get().sample, (images,)),
    ]:
        message = value_error_of(name, func, *args)
        expect(
            mentions_numbers(message, shape),
            f"{name}: the error must show the shape that came, {shape}; got {message!r}",
        )
        expect("3" in message, f"{name}: the error must say that 3 channels are expected; got {message!r}")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool], ids=str)
def test_images_of_the_wrong_dtype_are_a_value_error_naming_the_dtype(impl, model, dtype):
    images = torch.zeros(2, 3, 64, 64, dtype=dtype)
    message = value_error_of("CaptioningRNN.forward", model.get(), images, random_captions(2, 4))
    expect(
        str(dtype).replace("torch.", "") in message,
        f"the error must name the dtype that came, {dtype}; got {message!r}",
    )
    expect(
        "uint8" in message and "float" in message,
        f"the error must say that uint8 or float images are expected; got {message!r}",
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_captions_that_are_not_integer_are_a_value_error(impl, model, dtype):
    captions = random_captions(2, 4).to(dtype)
    message = value_error_of("CaptioningRNN.forward", model.get(), random_images(2, 64), captions)
    expect("float" in message, f"the error must name the dtype that came, {dtype}; got {message!r}")
    expect(
        "int" in message.replace(str(dtype), ""),
        f"the error must say that integer word indices are expected; got {message!r}",
    )


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8], ids=str)
def test_captions_of_another_integer_dtype_give_the_same_loss_or_a_value_error(impl, model, dtype):
    images, captions = random_images(2, 64), random_captions(2, 4)
    expected = forward(model.get(), images, captions)
    try:
        loss = model.get()(images, captions.to(dtype))
    except RemoteError as error:
        if error.type_name == "ValueError":
            expect(
                str(dtype).replace("torch.", "") in error.message,
                f"the error must name the dtype that came, {dtype}; got {error.message!r}",
            )
            return
        pytest.fail(
            f"CaptioningRNN.forward with {dtype} captions (integer word indices) raised "
            f"{error.type_name}: {error.message}; "
            f"expected the loss of the same int64 captions, or a ValueError naming the dtype",
            pytrace=False,
        )
    except WorkerLost as error:
        pytest.fail(f"CaptioningRNN.forward with {dtype} captions: {error}", pytrace=False)
    else:
        expect(
            torch.allclose(loss, expected),
            f"CaptioningRNN.forward with {dtype} captions gave {loss}, with int64 {expected}",
        )


@pytest.mark.parametrize("bad", [V, V + 7, -1])
def test_captions_outside_the_vocabulary_are_a_value_error(impl, model, bad):
    captions = random_captions(2, 4)
    captions[1, 2] = bad
    message = value_error_of("CaptioningRNN.forward", model.get(), random_images(2, 64), captions)
    expect(str(bad) in message, f"the error must show the word index that came, {bad}; got {message!r}")
    expect(str(V) in message, f"the error must give the vocabulary size {V}; got {message!r}")


@pytest.mark.parametrize("shape", [(2, 1), (2,)], ids=["one-word", "1d"])
def test_captions_too_short_or_not_2d_are_a_value_error_showing_the_shape(impl, model, shape):
    captions = torch.full(shape, WORD_TO_IDX["<START>"], dtype=torch.long)
    message = value_error_of("CaptioningRNN.forward", model.get(), random_images(2, 64), captions)
    expect(
        mentions_numbers(message, shape), f"the error must show the captions' shape that came, {shape}; got {message!r}"
    )
