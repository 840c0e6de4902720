"""
Shared utilities of the autograder: call the module under test, and turn
what goes wrong into an ordinary test failure that names the API function.

A student's file is graded while it is still partly a stub: functions that
raise NotImplementedError, return None, or end in `pass`. Every call into the
module therefore goes through `run` (or `call` / `build`), so that such a
function gives a failure like

    Failed: rnn_step_forward is not implemented (returned None)

rather than a confusing traceback, an error in a fixture, or a crash of the
whole run.
"""

import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import torch

# The test files that grade rnn_lstm_captioning.py against the contract (the
# stub check and the mutation check run exactly these), and those that check
# what our own module does beyond it (never graded).
GRADING_TEST_FILES = [
    "tests/grading/test_rnn.py",
    "tests/grading/test_embedding_loss.py",
    "tests/grading/test_lstm.py",
    "tests/grading/test_attention.py",
    "tests/grading/test_encoder.py",
    "tests/grading/test_captioning_model.py",
]
BEYOND_TEST_FILES = sorted(str(p.relative_to(Path(__file__).parent.parent)) for p in (Path(__file__).parent / "beyond").glob("test_*.py"))

# Private references to what the checks compare with, taken before the module
# under test is imported (conftest imports this file first): a submission that
# replaces torch.allclose cannot change what these do. tests/_tamper.py
# detects the replacement itself.
_Tensor = torch.Tensor
_allclose = torch.allclose
_equal = torch.equal
_float64 = torch.float64
_gradcheck = torch.autograd.gradcheck
_Parameter = torch.nn.Parameter

# Every public name of the API; a failure message of a module test names one.
API_NAMES = [
    "hello_rnn_lstm_captioning",
    "ImageEncoder",
    "rnn_step_forward",
    "rnn_step_backward",
    "rnn_forward",
    "rnn_backward",
    "RNN",
    "WordEmbedding",
    "temporal_softmax_loss",
    "LSTM",
    "dot_product_attention",
    "AttentionLSTM",
    "CaptioningRNN",
]

# A tiny vocabulary: the special tokens first, as in the COCO data.
WORDS = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(16)]
WORD_TO_IDX = {w: i for i, w in enumerate(WORDS)}
NULL, START, END = WORD_TO_IDX["<NULL>"], WORD_TO_IDX["<START>"], WORD_TO_IDX["<END>"]
ENCODER_CHANNELS = 400
# Both float types the API supports, for parametrize, with readable test ids.
FLOAT_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
# Decoder sizes of the small test models: distinct from each other, from V and
# from 400, so that layers can be told apart by their shapes.
WORDVEC_DIM, HIDDEN_DIM = 6, 8


# ---------------------------------------------------------------------------
# Calling the module under test
# ---------------------------------------------------------------------------


def _impl_file() -> Optional[str]:
    module = sys.modules.get("rnn_lstm_captioning")
    return getattr(module, "__file__", None)


def _where(error: BaseException) -> Optional[str]:
    """Qualified name of the innermost function of the module under test in error's traceback."""
    impl_file = _impl_file()
    where = None
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if impl_file is not None and Path(code.co_filename).resolve() == Path(impl_file).resolve():
            where = getattr(code, "co_qualname", code.co_name)
        tb = tb.tb_next
    return where


def run(label: str, func, *args, **kwargs):
    """
    Call func(*args, **kwargs), a piece of the API called label (for example
    "LSTM.step_forward"), failing the test with a message naming it when it is
    not implemented or raises.

    Returns:
    - what func returns; never None, and no None inside a returned tuple
    """
    unimplemented = None
    try:
        result = func(*args, **kwargs)
    except NotImplementedError as error:
        where = _where(error)
        unimplemented = f", raised in {where}" if where and where != label else ""
    except Exception as error:  # any crash is a failure of this function, not of the grader
        where = _where(error)
        inside = f" in {where}" if where and where != label else ""
        # Failing inside the except block keeps the original traceback in the report.
        pytest.fail(f"{label} raised {type(error).__name__}{inside}: {error}")
    if unimplemented is not None:
        # Failing outside the except block keeps the report to this one line.
        pytest.fail(f"{label} is not implemented (NotImplementedError{unimplemented})", pytrace=False)
    if result is None:
        pytest.fail(f"{label} is not implemented (returned None)", pytrace=False)
    if isinstance(result, tuple):
        for position, item in enumerate(result):
            if item is None:
                pytest.fail(f"{label} is not implemented (element {position} of its result is None)", pytrace=False)
    return result


def api(impl, name: str):
    """The public object `name` of the module under test, or a failure saying it is missing."""
    if not hasattr(impl, name):
        pytest.fail(f"{name} is missing from the module under test", pytrace=False)
    return getattr(impl, name)


def call(impl, name: str, *args, **kwargs):
    """Call the module-level function `name` of the module under test (see run)."""
    return run(name, api(impl, name), *args, **kwargs)


def build(impl, name: str, *args, **kwargs):
    """Construct the class `name` of the module under test (see run)."""
    return run(name, api(impl, name), *args, **kwargs)


def method(obj, name: str, *args, **kwargs):
    """Call obj.name(*args), labelled "Class.name" in failures (see run)."""
    label = f"{type(obj).__name__}.{name}"
    if not hasattr(obj, name):
        pytest.fail(f"{label} is missing", pytrace=False)
    return run(label, getattr(obj, name), *args, **kwargs)


def forward(module, *args):
    """Call module(*args), labelled "Class.forward" in failures."""
    return run(f"{type(module).__name__}.forward", module, *args)


# ---------------------------------------------------------------------------
# Checking results
# ---------------------------------------------------------------------------


def check_tensor(label: str, value, shape: Sequence[int], dtype: Optional[torch.dtype] = None):
    """Fail unless value is a tensor of the given shape (and dtype)."""
    # Exactly a Tensor: a subclass could redefine comparisons and arithmetic.
    if type(value) not in (_Tensor, _Parameter):
        pytest.fail(
            f"{label}: expected a torch.Tensor of shape {tuple(shape)}, got {type(value).__name__}", pytrace=False
        )
    if tuple(value.shape) != tuple(shape):
        pytest.fail(f"{label}: expected shape {tuple(shape)}, got {tuple(value.shape)}", pytrace=False)
    if dtype is not None and value.dtype != dtype:
        pytest.fail(f"{label}: expected dtype {dtype}, got {value.dtype}", pytrace=False)


def check_close(label: str, actual, expected, rtol: float = 1e-5, atol: float = 1e-7):
    """Fail unless actual has expected's shape and matches it to the tolerance."""
    expected = torch.as_tensor(expected)
    check_tensor(label, actual, expected.shape)
    actual = actual.detach().to(_float64).cpu()
    expected = expected.detach().to(_float64).cpu()
    if not _allclose(actual, expected, rtol=rtol, atol=atol):
        error = (actual - expected).abs().max().item()
        pytest.fail(
            f"{label}: differs from the reference by up to {error:.3g} " f"(allowed rtol={rtol:g}, atol={atol:g})",
            pytrace=False,
        )


def check_gradcheck(label: str, func, inputs: Sequence[torch.Tensor]):
    """Fail unless autograd's gradients of func (float64) match numeric ones (torch.autograd.gradcheck)."""
    try:
        ok = _gradcheck(func, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-4)
    except NotImplementedError:
        pytest.fail(f"{label} is not implemented (NotImplementedError)", pytrace=False)
    except torch.autograd.gradcheck.GradcheckError as error:
        first_line = str(error).strip().splitlines()[0]
        pytest.fail(f"{label}: autograd gradient differs from the numeric one ({first_line})", pytrace=False)
    assert ok, f"{label}: gradcheck failed"


# ---------------------------------------------------------------------------
# Finding submodules by type (never by attribute name)
# ---------------------------------------------------------------------------


def modules_of_type(model: torch.nn.Module, cls, exclude: Optional[torch.nn.Module] = None) -> List[torch.nn.Module]:
    """All distinct submodules of model that are instances of cls, those inside exclude left out."""
    excluded = {id(m) for m in exclude.modules()} if exclude is not None else set()
    return [m for m in model.modules() if isinstance(m, cls) and id(m) not in excluded and m is not model]


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def random_images(n: int, size: int = 112, seed: int = 0) -> torch.Tensor:
    """uint8 images (n, 3, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)


def random_captions(n: int, length: int, seed: int = 0, pad: int = 0) -> torch.Tensor:
    """
    int64 captions (n, length): <START>, random words (no special tokens),
    and the last `pad` positions of the first caption set to <NULL>.
    """
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, len(WORDS), (n, length), generator=generator)
    captions[:, 0] = START
    if pad:
        captions[0, length - pad :] = NULL
    return captions


def make_model(impl, cell_type: str, seed: int = 0, ignore_index: Optional[int] = NULL):
    """A small CaptioningRNN of the module under test with a random encoder, in eval mode."""
    torch.manual_seed(seed)
    model = build(
        impl,
        "CaptioningRNN",
        WORD_TO_IDX,
        input_dim=ENCODER_CHANNELS,
        wordvec_dim=WORDVEC_DIM,
        hidden_dim=HIDDEN_DIM,
        cell_type=cell_type,
        image_encoder_pretrained=False,
        ignore_index=ignore_index,
    )
    return model.eval()


def randn(*shape, dtype=torch.float64, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Seeded standard-normal tensor (times scale)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype) * scale


def named_parameters(module: torch.nn.Module) -> Dict[str, torch.nn.Parameter]:
    """The module's own parameters by name."""
    return dict(module.named_parameters(recurse=False))


def check_init(label: str, param: torch.Tensor, fan_in: int, tolerance: float = 0.06):
    """Fail unless param looks like randn / sqrt(fan_in): mean ~0, std ~1/sqrt(fan_in)."""
    values = param.detach().double().flatten()
    expected_std = 1 / math.sqrt(fan_in)
    std = values.std().item()
    if abs(std / expected_std - 1) > tolerance:
        pytest.fail(
            f"{label}: expected randn / sqrt({fan_in}) with std {expected_std:.4g}, got std {std:.4g}",
            pytrace=False,
        )
    mean = values.mean().item()
    if abs(mean) > 4 * expected_std / math.sqrt(values.numel()):
        pytest.fail(f"{label}: expected mean 0 (randn), got {mean:.4g}", pytrace=False)


class Lazy:
    """
    An object built on first use, inside a test (so that a construction that
    fails is a failure of each test that needs the object, not an error of a
    shared fixture), and reused afterwards; a failed construction is not retried.
    """

    def __init__(self, factory):
        """factory(): builds the object, failing through run/build when the module is incomplete."""
        self._factory = factory
        self._value = None
        self._failure = None

    def get(self):
        if self._failure is not None:
            pytest.fail(self._failure, pytrace=False)
        if self._value is None:
            try:
                self._value = self._factory()
            except pytest.fail.Exception as failure:
                self._failure = str(failure.msg)
                raise
        return self._value


def param(module: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """The module's parameter `name` (a name fixed by the API), or a failure saying it is missing."""
    params = dict(module.named_parameters(recurse=False))
    if name not in params:
        pytest.fail(f"{type(module).__name__} has no parameter {name!r}; it has {sorted(params)}", pytrace=False)
    return params[name]


def same(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether two tensors are equal element for element (torch.equal, by a private reference)."""
    return _equal(actual, expected)


def expect(condition, message: str):
    """Fail the test with message (and no traceback) unless condition holds."""
    # A tensor is judged by its one value (a plain Python number), so that a
    # result whose comparisons all say True cannot pass by its own say.
    if isinstance(condition, _Tensor):
        condition = condition.numel() == 1 and bool(condition.item())
    if not condition:
        pytest.fail(message, pytrace=False)
