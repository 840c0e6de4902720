"""
`make compat` (tests/compat.py): each pairing of Colab's versions gets a venv
with its pins and our other requirements unpinned, built once and reused while
its requirements stay the same. The builds and the checks themselves run in CI.
"""
import sys
from pathlib import Path

import pytest

from _kit import REPO_ROOT
from helper.common.utils import import_file

compat = import_file(REPO_ROOT / "tests" / "compat.py", "compat_check", register=False)


def test_a_pairing_pins_its_versions_and_leaves_every_other_requirement_unpinned():
    pairing = compat.Pairing("old", "3.11", "2.6.0", "0.21.0", "2.0.2", "a test")
    lines = compat.requirements(pairing).splitlines()
    assert lines[0] == "# Python 3.11"
    assert {"torch==2.6.0", "torchvision==0.21.0", "numpy==2.0.2"} <= set(lines)
    ours = {compat.requirement_name(line) for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()} - {""}
    others = ours - {"torch", "torchvision", "numpy"}
    assert others and others <= set(lines)  # by name alone: whatever the runtime has newest
    assert not any(line.startswith("torch==2.14") for line in lines)


def test_a_pairing_without_numpy_leaves_numpy_to_the_others():
    pairing = compat.Pairing("new", "3.13", "2.15.0", "0.29.2", None, "a test")
    assert "numpy" in compat.requirements(pairing).splitlines()


def test_requirement_names_drop_versions_markers_and_comments():
    assert compat.requirement_name("torch==2.14.1") == "torch"
    assert compat.requirement_name("pycocoevalcap>=1.2 ; python_version>'3'") == "pycocoevalcap"
    assert compat.requirement_name("# a comment") == ""
    assert compat.requirement_name("PyTest[extra]") == "pytest"


def test_a_venv_whose_stamp_holds_the_same_requirements_is_reused_without_pip(tmp_path, monkeypatch):
    pairing = compat.PAIRINGS[0]
    venv = tmp_path / pairing.name
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / compat.STAMP).write_text(compat.requirements(pairing))
    monkeypatch.setattr(compat.subprocess, "run", lambda *a, **k: pytest.fail("pip ran for a venv to reuse"))
    assert compat.build_venv(pairing, tmp_path) == (venv / "bin" / "python", "reused")


def test_this_interpreter_serves_its_own_version_and_a_missing_one_is_named():
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert Path(compat.find_python(here)).is_file()
    with pytest.raises(FileNotFoundError, match="no Python 9.99 here"):
        compat.find_python("9.99")
