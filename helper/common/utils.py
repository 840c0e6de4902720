"""Seeds, devices, and importing a module from its file."""
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Union

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
