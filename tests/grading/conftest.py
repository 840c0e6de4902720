import pytest


@pytest.fixture(scope="session")
def impl(impl_in_worker):
    """The module under test: in its worker process, never imported by the tests (tests/_grading.py)."""
    return impl_in_worker
