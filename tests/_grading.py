"""
Shared utilities of the autograder: call the module under test, and turn
what goes wrong into an ordinary test failure that names the API function.

The module under test never runs in this process: the `impl` fixture is a
Remote (helper.grading.remote) of the module imported in a worker process,
in the sandbox where bubblewrap works. Calls go there; tensors come back by
value, other objects stay there as Remotes. Everything a test compares with
is computed here, so the module can change only what its own functions
return, which is what is graded.

A student's file is graded while it is still partly a stub: functions that
raise NotImplementedError, return None, or end in `pass`. Every call into the
module therefore goes through `run` (or `call` / `build`), so that such a
function gives a failure like

    Failed: rnn_step_forward is not implemented (returned None)

rather than a confusing traceback, an error in a fixture, or a crash of the
whole run. A call that crashes its worker or runs past its time fails its
check; the next check gets a new worker.
"""

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from helper.grading.remote import Remote, RemoteError, WorkerLost, type_name

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


# The worker of the session (set by tests/conftest.py): the process that alone imports the module.
_WORKER = {"worker": None}


def worker():
    """The session's helper.grading.remote.Worker."""
    return _WORKER["worker"]


def shared_folder() -> Path:
    """A folder of this session that the worker can read (not write): files a test lays out for the module."""
    return _WORKER["shared"]


def _failure(label: str, error: BaseException):
    """Fail the test for an error of the module under test (RemoteError) or of its worker (WorkerLost)."""
    if isinstance(error, RemoteError):
        if error.not_implemented:
            where = f", raised in {error.where}" if error.where and not error.where.startswith(label) else ""
            pytest.fail(f"{label} is not implemented (NotImplementedError{where})", pytrace=False)
        inside = f" in {error.where}" if error.where else ""
        pytest.fail(f"{label} raised {error.type_name}{inside}: {error.message}", pytrace=False)
    pytest.fail(f"{label}: {error}", pytrace=False)


def run(label: str, func, *args, **kwargs):
    """
    Call func(*args, **kwargs), a piece of the API called label (for example
    "LSTM.step_forward") that runs in the worker, failing the test with a
    message naming it when it is not implemented, raises, or its worker dies
    or runs past its time.

    Returns:
    - what func returns (tensors by value, other objects as Remotes); never
      None, and no None inside a returned tuple
    """
    try:
        result = func(*args, **kwargs)
    except (RemoteError, WorkerLost) as error:
        _failure(label, error)
    if result is None:
        pytest.fail(f"{label} is not implemented (returned None)", pytrace=False)
    if isinstance(result, tuple):
        for position, item in enumerate(result):
            if item is None:
                pytest.fail(f"{label} is not implemented (element {position} of its result is None)", pytrace=False)
    return result


def probe(label: str, name: str, *args, **kwargs):
    """helper.grading.probes.NAME(*args, **kwargs) in the worker; its errors fail the test, naming label."""
    try:
        return worker().probe(name, *args, **kwargs)
    except (RemoteError, WorkerLost) as error:
        _failure(label, error)


def printed_by(label: str, func, *args, **kwargs) -> str:
    """What func(*args, **kwargs) printed (its stdout), in the worker."""
    try:
        return worker().call_printing(func, *args, **kwargs)[1]
    except (RemoteError, WorkerLost) as error:
        _failure(label, error)


def seed_worker(number: int) -> None:
    """torch.manual_seed(number) in the worker, as before building a module of the module under test."""
    probe("torch.manual_seed", "seed", number)


class ModuleInWorker:
    """
    The module under test as the tests see it (the `impl` fixture): its
    attributes are those of the module imported in the session's worker, in
    whichever worker runs now (a new one after a crash imports it again).
    """

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            module = worker().module()
        except RemoteError as error:
            pytest.fail(f"importing the module failed: {error.type_name}: {error.message}", pytrace=False)
        except WorkerLost as error:
            pytest.fail(f"importing the module failed: {error}", pytrace=False)
        return getattr(module, name)

    def __repr__(self) -> str:
        return "<the module under test, in its worker>"


def api(impl, name: str):
    """The public object `name` of the module under test, or a failure saying it is missing."""
    try:
        return getattr(impl, name)
    except AttributeError:
        pytest.fail(f"{name} is missing from the module under test", pytrace=False)
    except (RemoteError, WorkerLost) as error:
        _failure(name, error)


def call(impl, name: str, *args, **kwargs):
    """Call the module-level function `name` of the module under test (see run)."""
    return run(name, api(impl, name), *args, **kwargs)


def build(impl, name: str, *args, **kwargs):
    """Construct the class `name` of the module under test (see run)."""
    return run(name, api(impl, name), *args, **kwargs)


def method(obj, name: str, *args, **kwargs):
    """Call obj.name(*args), labelled "Class.name" in failures (see run)."""
    label = f"{type_name(obj)}.{name}"
    try:
        function = getattr(obj, name)
    except AttributeError:
        pytest.fail(f"{label} is missing", pytrace=False)
    except (RemoteError, WorkerLost) as error:
        _failure(label, error)
    return run(label, function, *args, **kwargs)


def forward(module, *args):
    """Call module(*args), labelled "Class.forward" in failures."""
    return run(f"{type_name(module)}.forward", module, *args)


def vjp(label: str, function, args, wrt=(), module=None, upstream=None, output_index=None, kwargs=None):
    """
    In the worker: function(*args, **kwargs) with gradients, and the
    vector-Jacobian product of its output (or of element output_index of a
    tuple result) with upstream (helper.grading.probes.vjp).

    Returns:
    - (output, [gradient of each argument in wrt], {parameter name of module: gradient or None})
    """
    try:
        result = worker().probe("vjp", function, list(args), kwargs or {}, list(wrt), module, upstream, output_index)
    except RemoteError as error:
        if "does not require grad" in error.message:  # a result computed outside autograd (or constant)
            pytest.fail(f"{label}: its result does not depend on its inputs through autograd ({error.message})",
                        pytrace=False)
        _failure(label, error)
    except WorkerLost as error:
        _failure(label, error)
    output, grads, param_grads = result
    for position, grad in zip(wrt, grads):
        if grad is None:
            pytest.fail(f"{label}: no gradient reaches argument {position} (autograd)", pytrace=False)
    return output, grads, param_grads


# ---------------------------------------------------------------------------
# Checking results
# ---------------------------------------------------------------------------


def check_tensor(label: str, value, shape: Sequence[int], dtype: Optional[torch.dtype] = None):
    """Fail unless value is a tensor of the given shape (and dtype)."""
    # Tensors come back from the worker as plain tensors; anything else stays there, as a Remote.
    if type(value) is not torch.Tensor:
        pytest.fail(
            f"{label}: expected a torch.Tensor of shape {tuple(shape)}, got {type_name(value)}", pytrace=False
        )
    if tuple(value.shape) != tuple(shape):
        pytest.fail(f"{label}: expected shape {tuple(shape)}, got {tuple(value.shape)}", pytrace=False)
    if dtype is not None and value.dtype != dtype:
        pytest.fail(f"{label}: expected dtype {dtype}, got {value.dtype}", pytrace=False)


def check_close(label: str, actual, expected, rtol: float = 1e-5, atol: float = 1e-7):
    """Fail unless actual has expected's shape and matches it to the tolerance."""
    expected = torch.as_tensor(expected)
    check_tensor(label, actual, expected.shape)
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    if not torch.allclose(actual, expected, rtol=rtol, atol=atol):
        error = (actual - expected).abs().max().item()
        pytest.fail(
            f"{label}: differs from the reference by up to {error:.3g} " f"(allowed rtol={rtol:g}, atol={atol:g})",
            pytrace=False,
        )


def check_gradients(label: str, grads: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor],
                    rtol: float = 1e-7, atol: float = 1e-9):
    """
    Fail unless each gradient the module's autograd gave (grads, from vjp)
    matches the one autograd gives for the reference computation (expected),
    name by name.
    """
    for name, want in expected.items():
        got = grads.get(name)
        if got is None:
            pytest.fail(f"{label}: no gradient for {name} (it does not reach the output through autograd)",
                        pytrace=False)
        check_close(f"{label}: gradient of {name} (autograd)", got, want, rtol=rtol, atol=atol)


def reference_gradients(function, inputs: Dict[str, torch.Tensor], upstream: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Autograd's gradients of function(**inputs) against each input, for the upstream gradient (computed here)."""
    leaves = {name: value.detach().clone().requires_grad_() for name, value in inputs.items()}
    output = function(**leaves)
    grads = torch.autograd.grad(output, list(leaves.values()), upstream, allow_unused=True)
    return {name: (g if g is not None else torch.zeros_like(v)) for (name, v), g in zip(leaves.items(), grads)}


# ---------------------------------------------------------------------------
# A model's layout, parameters and parts (found by type in the worker)
# ---------------------------------------------------------------------------


def layout(label: str, model) -> List[dict]:
    """The model's submodules as helper.grading.probes.layout describes them."""
    return probe(label, "layout", model)


def modules_of_type(label: str, model, api_name: str) -> List[dict]:
    """The layout entries of model's submodules that are instances of the API class api_name (or "Linear")."""
    return [entry for entry in layout(label, model) if entry["api"] == api_name]


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
    """A small CaptioningRNN of the module under test with a random encoder, in eval mode (a Remote)."""
    seed_worker(seed)
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
    return method(model, "eval")


def randn(*shape, dtype=torch.float64, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Seeded standard-normal tensor (times scale)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=dtype) * scale


def named_parameters(module) -> Dict[str, torch.Tensor]:
    """The module's own parameters by name: copies, from the worker (set_params changes them there)."""
    return probe(f"{type_name(module)}.named_parameters", "parameters", module)


def set_params(module, values: Dict[str, torch.Tensor]) -> None:
    """Copy values into the module's parameters (qualified names) in the worker."""
    probe(f"{type_name(module)}: setting parameters {sorted(values)}", "set_parameters", module, values)


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
    shared fixture), and reused afterwards; a failed construction is not
    retried. A Remote of a worker that was stopped since is built again.
    """

    def __init__(self, factory):
        """factory(): builds the object, failing through run/build when the module is incomplete."""
        self._factory = factory
        self._value = None
        self._failure = None

    def get(self):
        if self._failure is not None:
            pytest.fail(self._failure, pytrace=False)
        stale = isinstance(self._value, Remote) and self._value._generation != worker().generation
        if self._value is None or stale:
            try:
                self._value = self._factory()
            except pytest.fail.Exception as failure:
                self._failure = str(failure.msg)
                raise
        return self._value


def param(module, name: str) -> torch.Tensor:
    """
    A copy of the module's parameter `name` (a name fixed by the API), or a
    failure saying it is missing. To change it in the worker: set_params.
    """
    params = named_parameters(module)
    if name not in params:
        pytest.fail(f"{type_name(module)} has no parameter {name!r}; it has {sorted(params)}", pytrace=False)
    return params[name]


def same(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Whether two tensors are equal element for element."""
    return torch.equal(actual, expected)


def expect(condition, message: str):
    """Fail the test with message (and no traceback) unless condition holds."""
    # A tensor is judged by its one value (a plain Python number), so that a
    # result whose comparisons all say True cannot pass by its own say.
    if isinstance(condition, torch.Tensor):
        condition = condition.numel() == 1 and bool(condition.item())
    if not condition:
        pytest.fail(message, pytrace=False)
