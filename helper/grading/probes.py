"""
The operations of the checks that must run beside the module under test, in
the worker (helper.grading.worker), called by name from the judge.

They only gather plain data (parameters, the layout of a model, gradients)
or change a model the judge built (set its parameters). Their results are as
trustworthy as the module itself, since the module can change them: the
judge compares them with what it computes on its own.
"""
import sys
from typing import Dict, List, Optional, Sequence

import torch

# The API's classes that a model's parts are instances of.
API_CLASSES = ("ImageEncoder", "WordEmbedding", "RNN", "LSTM", "AttentionLSTM")


def seed(number: int) -> None:
    """torch.manual_seed(number) in the worker (before building a module, as the tests do)."""
    torch.manual_seed(number)


def set_env(name: str, value: str) -> None:
    """Set an environment variable of the worker (TORCH_HOME for a weight cache the judge laid out)."""
    import os

    os.environ[name] = value


def replace_env(name: str, value: Optional[str]) -> Optional[str]:
    """
    Set (or, for None, remove) an environment variable of the worker and
    return its previous value (None: it was unset), so that the judge can
    restore it (TORCH_HOME for a test's own weight cache).
    """
    import os

    previous = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    return previous


def parameters(module: torch.nn.Module, recurse: bool = False) -> Dict[str, torch.Tensor]:
    """The module's parameters by name (its own only, unless recurse), detached copies."""
    return {name: p.detach().clone() for name, p in module.named_parameters(recurse=recurse)}


def state_dict(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The module's state dict as a plain dict of tensors."""
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def set_parameters(module: torch.nn.Module, values: Dict[str, torch.Tensor]) -> None:
    """Copy values into the module's parameters (qualified names), without gradient."""
    params = dict(module.named_parameters())
    missing = sorted(set(values) - set(params))
    if missing:
        raise KeyError(f"{type(module).__name__} has no parameter {missing[0]!r}; it has {sorted(params)[:12]}")
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)


def load_state(module: torch.nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """module.load_state_dict(state) (strict)."""
    module.load_state_dict(state)


def layout(model: torch.nn.Module) -> List[dict]:
    """
    The model's submodules (itself left out), each as a dict:
    {"path", "type", "module" (a handle), "api" (the name of the API class it
    is an instance of, or "Linear", or None), "in_features", "out_features"
    (for Linear), "params" (ids of its parameters, recursively),
    "own_params" (names of its own parameters)}.
    """
    impl = sys.modules.get("rnn_lstm_captioning")
    classes = [(name, getattr(impl, name, None)) for name in API_CLASSES]
    found = []
    for path, module in model.named_modules():
        if module is model:
            continue
        # The most derived API class it is an instance of (an AttentionLSTM may subclass the LSTM).
        matches = [(name, cls) for name, cls in classes if isinstance(cls, type) and isinstance(module, cls)]
        api = next((name for name, cls in matches if all(issubclass(cls, other) for _, other in matches)), None)
        if api is None and isinstance(module, torch.nn.Linear):
            api = "Linear"
        found.append({
            "path": path, "type": type(module).__name__, "module": module, "api": api,
            "in_features": getattr(module, "in_features", None) if api == "Linear" else None,
            "out_features": getattr(module, "out_features", None) if api == "Linear" else None,
            "params": [id(p) for p in module.parameters()],
            "own_params": [name for name, _ in module.named_parameters(recurse=False)],
            "training": module.training,
        })
    return found


def parameter_ids(module: torch.nn.Module) -> List[int]:
    """The ids of the module's parameters (to compare with layout's)."""
    return [id(p) for p in module.parameters()]


def training_modes(module: torch.nn.Module) -> List[bool]:
    """module.training of the module and each of its submodules."""
    return [m.training for m in module.modules()]


def warnings_of(function, *args, **kwargs) -> List[dict]:
    """
    The warnings that function(*args, **kwargs) gives, every one (even one
    given before at the same place), its result left out: each as
    {"category" (its class's name), "message", "user_or_deprecation"
    (whether it is a UserWarning or a DeprecationWarning)}.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        function(*args, **kwargs)
    return [{"category": w.category.__name__, "message": str(w.message)[:2000],
             "user_or_deprecation": issubclass(w.category, (UserWarning, DeprecationWarning))} for w in caught]


def vjp(function, args: Sequence, kwargs: Optional[dict] = None, wrt: Sequence[int] = (),
        module: Optional[torch.nn.Module] = None, upstream=None, output_index: Optional[int] = None):
    """
    Call function(*args, **kwargs) with gradients and take the
    vector-Jacobian product of its output with upstream.

    Inputs:
    - wrt: the positions of the tensor arguments to differentiate against
    - module: whose parameters to differentiate against too (None: none)
    - upstream: the upstream gradient (None: ones, for a scalar output)
    - output_index: the element of a tuple result to differentiate (None: the result itself)

    Returns:
    - (output, [gradient of each wrt argument], {parameter name: gradient or None})
    """
    args = list(args)
    for i in wrt:
        args[i] = args[i].detach().clone().requires_grad_()
    params = dict(module.named_parameters()) if module is not None else {}
    for p in params.values():
        p.grad = None
    result = function(*args, **(kwargs or {}))
    output = result[output_index] if output_index is not None else result
    gradient = upstream if upstream is not None else torch.ones_like(output)
    output.backward(gradient)
    grads = [args[i].grad for i in wrt]
    return output.detach(), grads, {name: (p.grad.detach().clone() if p.grad is not None else None)
                                   for name, p in params.items()}


def sample(model: torch.nn.Module, images: torch.Tensor, **kwargs):
    """model.sample(images, **kwargs) without gradients, as the checks call it."""
    with torch.no_grad():
        return model.sample(images, **kwargs)


def greedy_captions(model: torch.nn.Module, images: torch.Tensor, max_length: int = 16,
                    batch_size: int = 100) -> torch.Tensor:
    """Greedy captions (N, max_length) of a model in eval mode, batch by batch (for the batch grader)."""
    model.eval()
    captions = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            result = model.sample(images[start : start + batch_size], max_length=max_length)
            words = result[0] if isinstance(result, tuple) else result
            captions.append(torch.as_tensor(words).long().cpu())
    return torch.cat(captions)


def public_check(part_key: str, name: str) -> dict:
    """
    Run the self-check's public check `name` of a part on the module
    (helper.kit.selfcheck; a worker started with the whole helper/).

    Returns:
    - {"status": pass, todo, fail or error, "detail"}
    """
    from helper.kit.selfcheck import run_check

    return run_check(sys.modules["rnn_lstm_captioning"], part_key, name)


def cuda_available() -> bool:
    """Whether the worker sees a GPU (never inside the sandbox)."""
    return torch.cuda.is_available()


def on_device(model: torch.nn.Module, images: torch.Tensor, captions: torch.Tensor, device: str,
              max_length: int = 3) -> dict:
    """
    The model, the images and the captions moved to device in the worker;
    the device types of what sample() and the loss return there:
    {"captions", "attn_weights" (None without a tuple), "loss"}.
    """
    model = model.to(device)
    with torch.no_grad():
        result = model.sample(images.to(device), max_length=max_length)
        words, weights = result if isinstance(result, tuple) else (result, None)
        loss = model(images.to(device), captions.to(device))
    return {"captions": words.device.type, "attn_weights": weights.device.type if weights is not None else None,
            "loss": loss.device.type}
