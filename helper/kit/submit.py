"""
Write the submission zip, as `python -m helper.submit` or from the notebook's last cell.

The zip holds what the grader reads, under the same names as in the folder:

    rnn_lstm_captioning.py          your module
    rnn_lstm_captioning.ipynb       your notebook, with its outputs (save it first)
    runs/notebook/attn/best.pt      the attention model that the notebook's training cell saved

Every file is checked before anything is written; when one is missing or
unreadable, the error lists all that is wrong and no zip is written. The zip
is written under a temporary name and renamed when complete.
"""
import argparse
import ast
import json
import os
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence

from helper.common.cli import run_command

ROOT = Path(__file__).resolve().parents[2]
ZIP_NAME = "rnn_lstm_captioning_submission.zip"
MODULE = "rnn_lstm_captioning.py"
NOTEBOOK = "rnn_lstm_captioning.ipynb"
WEIGHTS = "runs/notebook/attn/best.pt"
FILES = (MODULE, NOTEBOOK, WEIGHTS)
HOW_TO_MAKE = {
    MODULE: "your solution; it belongs next to the notebook",
    NOTEBOOK: "the notebook; save it in Jupyter or Colab first",
    WEIGHTS: "run the training cells of section 7 of the notebook (they save it)",
}


class SubmissionError(ValueError):
    """A file of the submission is missing or unreadable; the message lists each."""


def _problem(folder: Path, name: str) -> Optional[str]:
    """What is wrong with one file of the submission, or None when it is fine."""
    path = folder / name
    if not path.is_file():
        return f"{name} is missing ({HOW_TO_MAKE[name]})"
    if path.stat().st_size == 0:
        return f"{name} is empty"
    try:
        if name == NOTEBOOK:
            json.loads(path.read_text(encoding="utf-8"))
        elif name == WEIGHTS:
            with zipfile.ZipFile(path):  # torch.save writes a zip archive; loading it needs no code
                pass
    except (ValueError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        return f"{name} is damaged ({type(error).__name__}: {error})"
    return None


def warnings_for(folder: Path) -> List[str]:
    """Things worth knowing that do not stop the hand-in (a syntax error, a notebook never run)."""
    notes = []
    try:
        ast.parse((folder / MODULE).read_text(encoding="utf-8"))
    except SyntaxError as error:
        notes.append(f"{MODULE} has a syntax error on line {error.lineno}: it will not import when graded")
    cells = json.loads((folder / NOTEBOOK).read_text(encoding="utf-8")).get("cells", [])
    if not any(cell.get("outputs") for cell in cells):
        notes.append(f"{NOTEBOOK} has no outputs: run it and save it before handing it in")
    return notes


def write_submission(folder: Path = ROOT, out: Optional[Path] = None) -> Path:
    """
    Check the submission's files and write the zip.

    Inputs:
    - folder: the assignment's folder (the one with the notebook)
    - out: the zip to write; folder/rnn_lstm_captioning_submission.zip when None

    Returns:
    - the path of the zip

    Raises SubmissionError listing every missing, empty or damaged file;
    nothing is written then.
    """
    folder = Path(folder)
    out = Path(out) if out is not None else folder / ZIP_NAME
    problems = [p for p in (_problem(folder, name) for name in FILES) if p]
    if problems:
        raise SubmissionError("cannot write the submission:\n  - " + "\n  - ".join(problems))
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in FILES:
                archive.write(folder / name, arcname=name)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def describe(path: Path) -> str:
    """One line per file of a written zip: its name and size."""
    with zipfile.ZipFile(path) as archive:
        return "\n".join(f"  {info.filename} ({info.file_size:,} bytes)" for info in archive.infolist())


def submit(folder: Path = ROOT, out: Optional[Path] = None) -> Path:
    """write_submission, printing what went in and any warnings: what the notebook's last cell calls."""
    path = write_submission(folder, out)  # raises before the warnings when a file is missing or damaged
    print(f"wrote {path}:\n{describe(path)}")
    for note in warnings_for(Path(folder)):
        print(f"warning: {note}")
    print("Hand in this file.")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helper.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=ROOT, help="the assignment's folder (default: this kit's)")
    p.add_argument("--out", type=Path, default=None, help=f"the zip to write (default: FOLDER/{ZIP_NAME})")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(build_parser(), lambda args: submit(args.folder, args.out), argv)


if __name__ == "__main__":
    raise SystemExit(main())
