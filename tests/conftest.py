"""
Shared fixtures of the test suite.

The suite grades an implementation of `rnn_lstm_captioning.py` through its
public API only. Choose the file under test with

    pytest tests --impl path/to/rnn_lstm_captioning.py
    CAPTIONING_IMPL=path/to/rnn_lstm_captioning.py pytest tests

By default the repo's own module is tested. The chosen file is also placed
in sys.modules under the name `rnn_lstm_captioning`, so that helper code that
imports the module sees the implementation under test.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMPL = REPO_ROOT / "rnn_lstm_captioning.py"


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        action="store",
        default=None,
        help="path of the rnn_lstm_captioning.py to grade (default: $CAPTIONING_IMPL, else the repo's own)",
    )


def impl_path(config) -> Path:
    """The file under test: --impl, else $CAPTIONING_IMPL, else the repo's module."""
    chosen = config.getoption("--impl") or os.environ.get("CAPTIONING_IMPL")
    return Path(chosen).resolve() if chosen else DEFAULT_IMPL


def load_module_from(path: Path, name: str = "rnn_lstm_captioning"):
    """Import the Python file at path as a module called name."""
    if not path.is_file():
        raise FileNotFoundError(f"No implementation to grade at {path}: expected a rnn_lstm_captioning.py file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def impl(request):
    """The captioning module under test."""
    module = load_module_from(impl_path(request.config))
    sys.modules["rnn_lstm_captioning"] = module
    return module


def pytest_report_header(config):
    return f"captioning implementation under test: {impl_path(config)}"
