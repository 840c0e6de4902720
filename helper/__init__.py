"""
The package behind the notebook, the tests and the command-line tools.

Each module is about one thing:
- utils: seeds and devices
- gradcheck: numeric gradients and relative errors
- decoding: word indices to text
- training: the training loop
"""
from helper.captioning.decoding import decode_captions
from helper.captioning.gradcheck import compute_numeric_gradient, rel_error
from helper.captioning.training import train_captioner
from helper.common.utils import reset_seed

__all__ = [
    "compute_numeric_gradient",
    "decode_captions",
    "rel_error",
    "reset_seed",
    "train_captioner",
]
