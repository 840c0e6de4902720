"""
A submission must not be able to grade itself.

The file under test is imported into the test process, so it could replace
what the tests compare with (`torch.allclose := lambda *a, **k: True`). Two
defences, both set up before the submission is imported:

- `_grading` keeps private references to the comparison functions it uses
  (taken when it is imported, which conftest does first), and accepts only
  plain `torch.Tensor` results, not objects that compare equal to anything;
- `Snapshot` records the functions of torch, math, builtins, pytest and the
  grading helpers, and `changes()` names any that were replaced since. The
  grading plugin checks after the import and after every graded test, and a
  replaced function fails every graded test and zeroes the grade.

Neither stops code that is determined to rewrite the interpreter's memory;
the batch grader (helper.grade) therefore also runs each submission in its
own process and judges the results outside it.
"""
import builtins
import math
import sys
import types
from typing import Dict, List, Tuple

import pytest
import torch
import torch.autograd
import torch.nn.functional
import torch.testing

# What a correct module imports may itself rebind torch functions when first
# imported (torch._dynamo wraps torch.manual_seed, for one): import it before
# the snapshot, so that only the module under test's own changes show.
import torch._dynamo  # noqa: F401,E402
import torchvision  # noqa: F401,E402
import torchvision.models.feature_extraction  # noqa: F401,E402


def _namespaces() -> Dict[str, object]:
    """The objects whose attributes the tests rely on, by a readable name."""
    import _grading  # noqa: PLC0415 -- conftest imports it first; here only to name it

    import _pytest.outcomes  # noqa: PLC0415

    return {
        "torch": torch,
        "torch.Tensor": torch.Tensor,
        "torch._C.TensorBase": torch._C.TensorBase,
        "torch.nn.functional": torch.nn.functional,
        "torch.testing": torch.testing,
        "torch.autograd": torch.autograd,
        "torch.autograd.gradcheck": sys.modules["torch.autograd.gradcheck"],
        "math": math,
        "builtins": builtins,
        "pytest": pytest,
        "_pytest.outcomes": _pytest.outcomes,
        "_grading": _grading,
    }


def _fingerprint(value):
    """What must stay the same of an attribute: the object, and for a Python function its code and defaults."""
    if isinstance(value, types.FunctionType):
        return (value, value.__code__, value.__defaults__, value.__kwdefaults__)
    return (value,)


def _watched(owner) -> Dict[str, tuple]:
    """Fingerprints of owner's own callable attributes (functions, classes, modules): plain data may change."""
    return {
        name: _fingerprint(value)
        for name, value in list(vars(owner).items())
        if callable(value) or isinstance(value, types.ModuleType)
    }


class Snapshot:
    """The functions of the namespaces above, as they are when it is taken."""

    def __init__(self):
        self._saved: Dict[str, Tuple[object, Dict[str, tuple]]] = {
            name: (owner, _watched(owner)) for name, owner in _namespaces().items()
        }

    def changes(self) -> List[str]:
        """Names like "torch.allclose" of the functions replaced, altered or deleted since the snapshot."""
        changed = []
        for name, (owner, saved) in self._saved.items():
            now = vars(owner)
            for attribute, fingerprint in saved.items():
                if attribute not in now:
                    changed.append(f"{name}.{attribute} (deleted)")
                    continue
                current = _fingerprint(now[attribute])
                if len(current) != len(fingerprint) or any(a is not b for a, b in zip(current, fingerprint)):
                    changed.append(f"{name}.{attribute}")
        return changed
