"""
The package behind the notebook, the tests and the commands.

- helper/*.py          the commands (`python -m helper.train`, ...), thin wrappers over the subpackages
- helper/common/       seeds, devices, safe file writing, command-line plumbing
- helper/data/         the data sets: the common format, files, COCO, the built-in "shapes"
- helper/captioning/   training, decoding, metrics, checkpoints and plots of captioning models
- helper/kit/          what students get besides the notebook: the self-check, the hand-in, the rubric
- helper/instructor/   the instructor's tools: the student kit, the batch grader and its sandbox
- helper/dev/          the project's own tools: benchmark, figures, GPU check, notebook outputs

The notebook imports what it needs first from here.
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
