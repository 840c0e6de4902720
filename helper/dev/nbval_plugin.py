"""
What `pytest --nbval` compares in this project's notebook, loaded for every
pytest run (pytest.ini).

The notebook checks the student's module, and the module's own output is not
part of the contract: a correct solution may print other text, and building
the encoder with torchvision's deprecated `pretrained=` argument writes a
warning to stderr. So stderr is never compared (nbval compares it by
default), and the cells whose output comes from the module are marked
`# NBVAL_IGNORE_OUTPUT` in the notebook itself.
"""


def pytest_collection_modifyitems(items):
    for item in items:
        notebook = item.parent
        skip = getattr(notebook, "skip_compare", None)
        if skip is not None and "stderr" not in skip:
            notebook.skip_compare = (*skip, "stderr")
