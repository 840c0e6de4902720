"""
Run the notebook and store its outputs, as `python -m helper.notebook`.

The grader (`pytest --nbval`) compares every cell's output with the output
stored in the notebook, so the stored outputs must be those of the current
module, helpers and data. After a change to any of them, run

    python -m helper.notebook                 # rnn_lstm_captioning.ipynb in place
    python -m helper.notebook --all           # the "# NBVAL_SKIP" cells too (minutes)

Cells marked "# NBVAL_SKIP" (full training) are left without outputs unless
--all is given: the grader skips them. The notebook is written to a
temporary file and renamed over the original only when every cell ran.
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from helper.common.cli import run_command
from helper.common.files import atomic_output

NOTEBOOK = Path(__file__).resolve().parents[2] / "rnn_lstm_captioning.ipynb"
SKIP_MARK = "# NBVAL_SKIP"


def execute_notebook(path: Path = NOTEBOOK, run_skipped: bool = False, timeout: int = 1800) -> int:
    """
    Execute a notebook top to bottom in a fresh kernel of this Python and
    store the outputs in place.

    Inputs:
    - path: the notebook
    - run_skipped: run the cells marked "# NBVAL_SKIP" too; otherwise they
      are cleared and not run
    - timeout: seconds a single cell may take

    Returns:
    - the number of cells run

    Raises nbclient's CellExecutionError (naming the cell) when a cell fails;
    the notebook on disk is then unchanged.
    """
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    skipped = []
    if not run_skipped:
        # A skipped cell becomes a raw cell for the run, then is put back without outputs.
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and cell.source.lstrip().startswith(SKIP_MARK):
                skipped.append((index, cell))
                notebook.cells[index] = nbformat.v4.new_raw_cell(cell.source)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    for index, cell in skipped:
        cell.outputs, cell.execution_count = [], None
        notebook.cells[index] = cell
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)  # run times: they would change the file on every run
    with atomic_output(path) as tmp:
        nbformat.write(notebook, str(tmp))
    return sum(cell.cell_type == "code" for cell in notebook.cells) - len(skipped)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helper.notebook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", type=Path, default=NOTEBOOK, help="the notebook (rnn_lstm_captioning.ipynb)")
    p.add_argument("--all", dest="run_skipped", action="store_true", help="run the # NBVAL_SKIP cells too")
    return p


def notebook_command(args: argparse.Namespace) -> None:
    count = execute_notebook(args.path, args.run_skipped)
    print(f"ran {count} cells of {args.path}; outputs stored")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(build_parser(), notebook_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
