"""
`python -m helper.notebook` stores a notebook's outputs (what nbval compares
against), leaving the cells the grader skips without outputs.
"""
import nbformat
import pytest

from helper.dev.notebook import execute_notebook


def write_notebook(path, *sources):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nbformat.write(notebook, str(path))


@pytest.mark.slow  # runs a notebook in a kernel
def test_outputs_are_stored_and_skipped_cells_stay_empty(tmp_path):
    path = tmp_path / "nb.ipynb"
    write_notebook(path, "x = 6 * 7\nprint(x)", "# NBVAL_SKIP\nprint('slow')", "print(x + 1)")
    assert execute_notebook(path) == 2
    cells = nbformat.read(path, as_version=4).cells
    assert [o["text"] for o in cells[0].outputs] == ["42\n"]
    assert cells[1].outputs == [] and cells[1].cell_type == "code" and cells[1].source.startswith("# NBVAL_SKIP")
    assert [o["text"] for o in cells[2].outputs] == ["43\n"]
    assert "execution" not in cells[0].metadata  # no run times in the file


def test_a_failing_cell_leaves_the_notebook_unchanged(tmp_path):
    from nbclient.exceptions import CellExecutionError

    path = tmp_path / "nb.ipynb"
    write_notebook(path, "print(1)", "raise ValueError('broken')")
    before = path.read_bytes()
    with pytest.raises(CellExecutionError, match="broken"):
        execute_notebook(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["nb.ipynb"]
