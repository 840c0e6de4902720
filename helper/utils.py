"""Seeds and devices."""
import random

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
