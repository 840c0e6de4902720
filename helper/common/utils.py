"""Seeds and deterministic kernels, devices, and importing a module from its file."""
import contextlib
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional, Union

import numpy as np
import torch


def reset_seed(number: int) -> None:
    """
    Seed Python's, NumPy's and PyTorch's random number generators, so that a
    run gives the same numbers every time.

    Inputs:
    - number: the seed
    """
    random.seed(number)
    np.random.seed(number)
    torch.manual_seed(number)


@contextlib.contextmanager
def reproducible(device: torch.device, threads: Optional[int] = None) -> Iterator[int]:
    """
    A context in which training gives the same numbers on every run: the
    one place where the trainers (train_captioner, python -m helper.train)
    set up their determinism. Seeds are reset_seed's job; this is about
    the kernels, which on a CPU can differ between two runs of one seed:
    - Deterministic algorithms. The backward pass of indexing a table
      (the word embedding's W_embed[x]) accumulates into its rows with
      atomic float additions when several threads share a large batch, so
      the order of the additions, hence the rounding, follows which thread
      gets there first, which a busy machine changes from run to run.
      torch.use_deterministic_algorithms makes it sort the indices and add
      in order. warn_only: an operation of a student's module that has no
      deterministic version warns instead of stopping the training.
      Filling fresh tensors with NaN (fill_uninitialized_memory) stays off:
      it catches reads of uninitialised memory, which a correct kernel
      never does, and costs a write of every new tensor.
    - A fixed number of intra-op threads. oneDNN and MKL split their sums
      by thread, so 1 and 2 threads round differently (already in the first
      loss of a bfloat16 run); a run records its count and a resumed run
      uses it again.

    On CUDA the kernels are left as they are (cuBLAS would need its own
    workspace setting, and the cost there is unmeasured); the threads are
    still set, for the CPU's share of the work.

    Inputs:
    - device: where training runs
    - threads: intra-op threads (torch.set_num_threads); None keeps the
      process's current number

    Yields:
    - the number of threads in use; the previous settings come back on exit
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    previous_threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.set_num_threads(previous_threads)


def pick_device(name: str = "auto") -> torch.device:
    """
    Inputs:
    - name: "auto" (CUDA when available, else CPU), or any torch device name

    Returns:
    - the torch.device
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def import_file(path: Union[str, Path], name: str = "rnn_lstm_captioning", register: bool = True) -> ModuleType:
    """
    Import the Python file at path as a module called name: a student's or
    an instructor's rnn_lstm_captioning.py, wherever it is.

    Inputs:
    - path: the .py file
    - name: the module's name
    - register: also put it in sys.modules[name] (before it runs, as an
      ordinary import does), so that code importing that name gets it

    Returns:
    - the module
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No module to import at {path}: expected a .py file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
