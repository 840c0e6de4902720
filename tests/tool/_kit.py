"""
What the tests of the student kit share: the reference module (with its
solution blocks and hints) and a kit made from it.

The kit is made from the repo's own module. When another file has been
swapped in place of it (CI runs the suite with independent solutions in
place, which have no solution blocks), the reference is the committed one
(`git show HEAD:rnn_lstm_captioning.py`): the kit is always made from the
reference solution, whatever file is being graded.
"""
import shutil
import subprocess
from pathlib import Path

from helper.instructor.release import BEGIN, write_kit

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = "rnn_lstm_captioning.py"
NOTEBOOK = "rnn_lstm_captioning.ipynb"


def reference_source() -> str:
    """The text of the reference module: the repo's, or the committed one when a solution is swapped in."""
    text = (REPO_ROOT / MODULE).read_text()
    if BEGIN in text:
        return text
    shown = subprocess.run(["git", "show", f"HEAD:{MODULE}"], cwd=REPO_ROOT, capture_output=True, text=True)
    if shown.returncode != 0 or BEGIN not in shown.stdout:
        raise AssertionError(
            f"{MODULE} in place has no solution blocks and git has no committed reference ({shown.stderr.strip()}): "
            f"the kit tests need the reference solution"
        )
    return shown.stdout


def make_source_repo(folder: Path) -> Path:
    """A repo to make the kit from: the repo's files, with the reference module."""
    folder.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "helper", folder / "helper", ignore=shutil.ignore_patterns("__pycache__"))
    datasets = folder / "datasets"
    datasets.mkdir()
    for path in (REPO_ROOT / "datasets").iterdir():
        if path.is_file() and path.stat().st_size < 1_000_000:  # notes and code, not the cached data sets
            shutil.copy2(path, datasets / path.name)
    for name in (NOTEBOOK, "requirements.txt", "pytest.ini", "Makefile"):
        shutil.copy2(REPO_ROOT / name, folder / name)
    (folder / MODULE).write_text(reference_source())
    return folder


def make_kit(base: Path) -> Path:
    """A student kit in base/kit, made from a copy of the repo with the reference module."""
    source = make_source_repo(base / "source")
    kit = base / "kit"
    write_kit(kit, repo=source)
    return kit


def copy_kit(kit: Path, to: Path, with_reference: bool = False) -> Path:
    """A copy of a kit (its module replaced by the reference when with_reference)."""
    shutil.copytree(kit, to)
    if with_reference:
        (to / MODULE).write_text(reference_source())
    return to


def kit_texts(kit: Path) -> dict:
    """Every file of the kit as text: relative path -> text."""
    return {str(p.relative_to(kit)): p.read_text(errors="replace") for p in kit.rglob("*") if p.is_file()}
