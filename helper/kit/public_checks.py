"""
The public checks of the self-check, one list per graded part: the parts "rnn",
"embedding_loss", "lstm", "attention" and "encoder" in public_checks_parts.py,
the captioning model's in public_checks_model.py (what a check may compare
with: check_tools.py).
"""
from typing import Callable, Dict, List, Tuple

from helper.kit.public_checks_model import CHECKS as MODEL_CHECKS
from helper.kit.public_checks_parts import CHECKS as PART_CHECKS


def all_checks() -> Dict[str, List[Tuple[str, Callable]]]:
    """Part key -> [(check name, check function of the module)], in the order they run."""
    return {**PART_CHECKS, **MODEL_CHECKS}
