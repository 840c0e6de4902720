"""
CaptioningRNN: its parts, its training loss with the caption shift, and
greedy sampling; hello_rnn_lstm_captioning.

The model runs in the worker (tests/_grading.py); its parts are found by
type in its layout (never by attribute name), and the tests recompute the
model's results from those parts by hand (tests/_captioning.py).
"""

import pytest
import torch

from _grading import (
    ENCODER_CHANNELS,
    END,
    HIDDEN_DIM as H,
    NULL,
    START,
    WORDVEC_DIM as W,
    api,
    check_close,
    check_tensor,
    expect,
    forward,
    Lazy,
    make_model,
    method,
    named_parameters,
    param,
    printed_by,
    probe,
    random_captions,
    random_images,
    set_params,
    vjp,
)
from _captioning import (
    CELL_TYPES,
    DECODER_PARTS,
    RECURRENT,
    V,
    check_greedy,
    for_sampling,
    parts_of,
    sample,
    teacher_forced,
)
from _references import temporal_loss

pytestmark = pytest.mark.part("captioning")

@pytest.fixture(scope="module")
def models(impl):
    """One shared model per cell type (built on first use); tests must not change them."""
    return {cell_type: Lazy(lambda cell_type=cell_type: make_model(impl, cell_type)) for cell_type in CELL_TYPES}


# Given code: reported with the part, worth no points.
@pytest.mark.unscored
def test_hello_prints_the_greeting(impl):
    printed = printed_by("hello_rnn_lstm_captioning", api(impl, "hello_rnn_lstm_captioning"))
    expect(printed == "Hello from rnn_lstm_captioning.py!\n", f"hello_rnn_lstm_captioning printed {printed!r}")


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


# Structure alone: a model whose parts compute nothing passes.
@pytest.mark.unscored
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_has_exactly_the_parameters_of_its_parts(impl, models, cell_type):
    model = models[cell_type].get()
    parts = parts_of(model, cell_type)
    for other in set(RECURRENT.values()) - {RECURRENT[cell_type]}:
        found = [e for e in parts.entries if e["type"] == other and e["api"] is not None]
        expect(not found, f'CaptioningRNN(cell_type="{cell_type}") must not hold a {other}')
    linears = [e for e in parts.decoder_entries() if e["api"] == "Linear"]
    expect(
        len(linears) == 2, f"CaptioningRNN must have two nn.Linear layers besides the encoder's; found {len(linears)}"
    )
    expected = {i for ids in parts.param_ids.values() for i in ids}
    actual = set(probe("CaptioningRNN.parameters", "parameter_ids", model))
    expect(
        actual == expected,
        f'CaptioningRNN(cell_type="{cell_type}") must have the parameters of its encoder, WordEmbedding, '
        f"two Linear layers and {RECURRENT[cell_type]} and no others; "
        f"{len(actual - expected)} extra, {len(expected - actual)} missing",
    )
    recurrent_sizes = {"rnn": W * H + H * H + H, "lstm": 4 * (W * H + H * H + H), "attn": 4 * (W * H + 2 * H * H + H)}
    decoder = V * W + (ENCODER_CHANNELS * H + H) + (H * V + V) + recurrent_sizes[cell_type]
    # The decoder's parameters: the model's own and those of every module outside the encoder.
    decoder_params = dict(named_parameters(model))
    for entry in parts.decoder_entries():
        decoder_params.update({f"{entry['path']}.{name}": p for name, p in named_parameters(entry["module"]).items()})
    counted = sum(p.numel() for p in decoder_params.values())
    expect(
        counted == decoder,
        f"CaptioningRNN's decoder must have {decoder} parameters (V={V}, W={W}, H={H}); got {counted}",
    )


# ---------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_loss_reads_words_up_to_the_last_and_predicts_from_the_second(impl, models, cell_type):
    model = models[cell_type].get()
    parts = parts_of(model, cell_type)
    images = random_images(2, seed=1)
    captions = random_captions(2, 6, seed=2, pad=2)  # <NULL> targets are ignored
    loss = forward(model, images, captions)
    scores, _, _ = teacher_forced(parts, cell_type, images, captions[:, :-1])
    check_tensor("CaptioningRNN.forward", loss, (), torch.float32)
    expected = temporal_loss(scores, captions[:, 1:], ignore_index=NULL)
    check_close(
        f'CaptioningRNN.forward ("{cell_type}": inputs captions[:, :-1], targets captions[:, 1:], '
        f"h0 from the projected image features, <NULL> ignored)",
        loss,
        expected,
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_loss_trains_every_decoder_part(impl, cell_type):
    model = make_model(impl, cell_type, seed=3)
    parts = parts_of(model, cell_type)
    # Saves the encoder's backward pass (in the worker); the test is about the decoder.
    method(parts.encoder, "requires_grad_", False)
    # loss.backward() in the worker: the gradient of every parameter of the model, by qualified name.
    _, _, grads = vjp("CaptioningRNN.forward", model, [random_images(2, seed=4), random_captions(2, 4, seed=5)],
                      module=model)
    for part in DECODER_PARTS:
        path = parts.paths[part]
        names = [name for name in grads if name.startswith(path + ".")]
        expect(names, f"CaptioningRNN.forward: the {parts.types[part]} at {path!r} has no parameters")
        for name in names:
            expect(
                grads[name] is not None and grads[name].abs().sum() > 0,
                f"CaptioningRNN.forward: the loss has no gradient for a parameter of the {parts.types[part]} "
                f"({name})",
            )


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_captioning_rnn_works_in_float64(impl, cell_type):
    model = method(make_model(impl, cell_type, seed=6), "double")
    parts = parts_of(model, cell_type)
    images, captions = random_images(2, seed=7), random_captions(2, 4, seed=8)
    loss = forward(model, images, captions)
    check_tensor("CaptioningRNN.forward in float64", loss, (), torch.float64)
    expect(torch.isfinite(loss), f"CaptioningRNN.forward in float64 gave {loss}")
    # Not only a finite number: the loss of the float64 model's own parts.
    scores, _, _ = teacher_forced(parts, cell_type, images, captions[:, :-1])
    check_close(
        f'CaptioningRNN.forward in float64 ("{cell_type}")',
        loss,
        temporal_loss(scores, captions[:, 1:], ignore_index=NULL),
        rtol=1e-9,
        atol=1e-9,
    )


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampling_models(impl):
    """Per cell type a model for sampling (for_sampling) that never says <END>."""
    return {
        cell_type: Lazy(lambda cell_type=cell_type: for_sampling(make_model(impl, cell_type, seed=10), cell_type))
        for cell_type in CELL_TYPES
    }


# Shapes alone: a sample() that returns zeros of the right shape passes.
@pytest.mark.unscored
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_sample_returns_generated_words_of_max_length(impl, sampling_models, cell_type):
    model = sampling_models[cell_type].get()
    images = random_images(3, seed=11)
    captions, _ = sample(model, cell_type, images, max_length=5)
    check_tensor("CaptioningRNN.sample captions", captions, (3, 5), torch.int64)
    expect(
        ((captions >= 0) & (captions < V)).all(), f"CaptioningRNN.sample returned words outside [0, {V}): {captions}"
    )
    expect(
        (captions[:, 0] != START).all(),
        "CaptioningRNN.sample: captions[:, 0] must be the first generated word, not <START>",
    )
    default_captions, _ = sample(model, cell_type, images)
    check_tensor("CaptioningRNN.sample captions with the default max_length=15", default_captions, (3, 15), torch.int64)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_sample_is_greedy_each_word_is_the_argmax_given_the_words_before(impl, sampling_models, cell_type):
    model = sampling_models[cell_type].get()
    images = random_images(4, seed=12)
    captions, attn_weights = sample(model, cell_type, images, max_length=8)
    check_tensor("CaptioningRNN.sample captions", captions, (4, 8), torch.int64)
    check_greedy(model, cell_type, images, captions, attn_weights)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_sample_goes_on_with_each_caption_until_its_own_end(impl, cell_type):
    # <END>'s bias is set between the images' first-word margins, so that
    # some captions end at once and the others go on: a caption that has
    # ended must not end the others.
    model = for_sampling(make_model(impl, cell_type, seed=15), cell_type, end_bias=0.0)
    parts = parts_of(model, cell_type)
    images = random_images(6, seed=16)
    first, _, _ = teacher_forced(parts, cell_type, images, torch.full((6, 1), START))
    first = first[:, 0]  # (N, V), <END>'s bias still 0
    others = first.clone()
    others[:, END] = -float("inf")
    margins = (others.max(dim=1).values - first[:, END]).sort().values  # <END> wins where its bias is larger
    gaps = margins[2:5] - margins[1:4]  # split between 2-4 ending captions, where the margins lie farthest apart
    split = int(gaps.argmax()) + 1
    bias = param(parts.output_proj, "bias")
    bias[END] = float(margins[split] + margins[split + 1]) / 2
    set_params(model, {f"{parts.paths['output_proj']}.bias": bias})
    captions, attn_weights = sample(model, cell_type, images, max_length=6)
    check_tensor("CaptioningRNN.sample captions", captions, (6, 6), torch.int64)
    check_greedy(model, cell_type, images, captions, attn_weights)


# The devices of this machine: the CUDA case is collected where there is a GPU.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# Devices alone: a sample() that returns zeros on the right devices passes.
@pytest.mark.unscored
@pytest.mark.parametrize("device", DEVICES)
def test_sample_returns_captions_on_the_images_device_and_attention_weights_on_the_cpu(impl, device):
    if device != "cpu" and not probe("torch.cuda.is_available", "cuda_available"):
        pytest.skip(f"the module's worker sees no {device} (the sandbox has none; --sandbox off on a GPU machine)")
    model = make_model(impl, "attn", seed=13)
    # Tensors travel to and from the worker on the CPU: the worker moves them and reports the devices.
    devices = probe("CaptioningRNN.sample", "on_device", model, random_images(2, seed=14), random_captions(2, 4),
                    device)
    expect(devices["captions"] == device, f"CaptioningRNN.sample captions must be on the images' device ({device}); "
                                          f"got {devices['captions']}")
    expect(devices["attn_weights"] == "cpu", "CaptioningRNN.sample attn_weights_all must be on the CPU")
    expect(devices["loss"] == device, f"CaptioningRNN.forward: the loss must be on the images' device ({device})")
