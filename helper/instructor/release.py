"""
Write the student kit, as `python -m helper.release OUT_DIR` (instructors only).

The kit is what students get: the module with every solution block replaced
by its hints and `raise NotImplementedError`, the notebook without the outputs
that come from our solution, `helper/` (without the instructor's tools),
the `datasets/` notes, `requirements.txt`, a Makefile and a README for
students. It holds the public checks (the notebook's and `helper.selfcheck`)
and the hand-in command (`helper.submit`), never the grading tests.

Hints live in the reference module, right after each `# BEGIN SOLUTION`:

    # BEGIN SOLUTION
    # HINT: TODO: one step of the vanilla RNN.
    # HINT: 1. The pre-activation, (N, H): ...
    next_h = ...                       <- solution code, left out of the kit
    # END SOLUTION

becomes in the kit

    # BEGIN SOLUTION
    # TODO: one step of the vanilla RNN.
    # 1. The pre-activation, (N, H): ...
    raise NotImplementedError("rnn_step_forward is not implemented yet: ...")
    # END SOLUTION

Every block needs at least one HINT line, so that no block reaches students
bare. The folder is written under a temporary name and renamed when complete.
"""
import argparse
import ast
import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from helper.common.cli import run_command

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = "rnn_lstm_captioning.py"
NOTEBOOK = "rnn_lstm_captioning.ipynb"
BEGIN, END, HINT = "# BEGIN SOLUTION", "# END SOLUTION", "# HINT:"
# What stays out of the kit: the instructor's package (the kit maker, the batch grader, its sandbox and
# similarity report), the commands over it, and the GPU check (it runs the grading tests). Paths under helper/.
INSTRUCTOR_ONLY = ("instructor/", "release.py", "grade.py", "gradescope.py", "gpu_check.py", "dev/gpu_check.py", "dev/gpu_compare.py")
# Cells whose outputs vary or come from long runs: their stored outputs are never kept.
UNSAFE_MARKERS = ("# NBVAL_IGNORE_OUTPUT", "# NBVAL_SKIP")
TOP_FILES = ("requirements.txt", "pytest.ini")
MARKER = ".student-kit"  # marks a folder that release wrote, which --force may replace


def _owners(source: str) -> Dict[int, str]:
    """Line number -> qualified name ("f" or "Class.method") of the function around it."""
    owners = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            owners.update({line: node.name for line in range(node.lineno, node.end_lineno + 1)})
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    name = f"{node.name}.{item.name}"
                    owners.update({line: name for line in range(item.lineno, item.end_lineno + 1)})
    return owners


def solution_blocks(source: str) -> List[dict]:
    """
    The solution blocks of a module.

    Inputs:
    - source: the text of the reference module

    Returns:
    - one dict per block: "owner" (function name), "indent", "begin" and
      "end" (0-based line indices of the markers), "hints" (texts of the
      HINT lines), "code" (the other lines between the markers)

    Raises ValueError for a block without an end, a nested block, an end
    without a begin, or a block without hints, naming the line.
    """
    owners = _owners(source)
    blocks, current = [], None
    for index, line in enumerate(source.splitlines()):
        stripped = line.strip()
        if stripped == BEGIN:
            if current is not None:
                raise ValueError(f"line {index + 1}: {BEGIN} inside the block that begins on line {current['begin'] + 1}")
            indent = line[: len(line) - len(line.lstrip())]
            current = {"owner": owners.get(index + 1, "<module>"), "indent": indent, "begin": index,
                       "hints": [], "code": []}
        elif stripped == END:
            if current is None:
                raise ValueError(f"line {index + 1}: {END} without a {BEGIN} before it")
            if not current["hints"]:
                raise ValueError(
                    f"line {current['begin'] + 1}: the solution block of {current['owner']} has no '{HINT}' lines; "
                    f"expected the students' hints right after {BEGIN}"
                )
            current["end"] = index
            blocks.append(current)
            current = None
        elif current is not None:
            if stripped.startswith(HINT):
                text = stripped[len(HINT):]
                current["hints"].append(text[1:] if text.startswith(" ") else text)  # keeps the hint's own indent
            else:
                current["code"].append(line)
    if current is not None:
        raise ValueError(f"line {current['begin'] + 1}: {BEGIN} of {current['owner']} without an {END}")
    if not blocks:  # a solution without markers (a swapped-in file) would go to students whole
        raise ValueError(f"no '{BEGIN}' blocks in the module: expected the reference solution with its marked blocks")
    return blocks


def strip_solutions(source: str) -> str:
    """
    The student's version of the module.

    Inputs:
    - source: the reference module's text

    Returns:
    - the text with each block's code replaced by its hints (as comments)
      and a `raise NotImplementedError` that names the function; the
      markers stay, to show where the student writes
    """
    lines = source.splitlines()
    out, previous_end = [], -1
    for block in solution_blocks(source):
        pad = block["indent"]
        out.extend(lines[previous_end + 1: block["begin"] + 1])
        out.extend(f"{pad}# {hint}".rstrip() for hint in block["hints"])
        message = f"{block['owner']} is not implemented yet (see its TODO in {MODULE})"
        out.append(f"{pad}raise NotImplementedError({message!r})")
        out.append(lines[block["end"]])
        previous_end = block["end"]
    out.extend(lines[previous_end + 1:])
    return "\n".join(out) + "\n"


def _safe_outputs(cell) -> bool:
    """Whether a code cell's stored outputs may go to students (see clean_notebook)."""
    if any(marker in cell.source for marker in UNSAFE_MARKERS):
        return False
    return all(out.get("output_type") == "stream" and out.get("name") == "stdout" for out in cell.outputs)


def clean_notebook(notebook):
    """
    The students' notebook: keep only the stored outputs that show what a
    correct solution prints in the fixed checks (plain text: shapes and
    "OK" lines); clear the rest.

    Cleared: cells marked NBVAL_IGNORE_OUTPUT or NBVAL_SKIP (our model's
    losses, captions, training runs), figures (our model's samples, attention
    maps and loss curves), stderr and errors, with their execution counts.
    The kept text lets `pytest --nbval` in the kit check a student's run
    against "OK"; it holds no value a student could copy into the module.
    Run times are dropped.

    Inputs:
    - notebook: an nbformat notebook (changed in place)

    Returns:
    - the notebook
    """
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if not _safe_outputs(cell):
            # nbval treats a cell with outputs but no execution count as broken: the kept keep theirs
            cell.outputs, cell.execution_count = [], None
        for out in cell.outputs:
            out.pop("execution_count", None)
    return notebook


def is_instructor_only(relative: str) -> bool:
    """Whether a file of helper/ (its path under helper/, with "/") stays out of the kit."""
    return any(relative == item or (item.endswith("/") and relative.startswith(item)) for item in INSTRUCTOR_ONLY)


def _helper_imports(path: Path) -> List[str]:
    """The helper.* modules a file imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "helper":
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "helper"]
    return found


def helper_files(repo: Path) -> List[Path]:
    """
    The files of helper/ that students get: all but INSTRUCTOR_ONLY.

    Raises ValueError naming a kit file that imports an instructor-only
    module, since the kit would then fail where students run it.
    """
    root = repo / "helper"
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    kit = [p for p in files if not is_instructor_only(p.relative_to(root).as_posix())]
    left_out = {".".join(("helper",) + p.relative_to(root).with_suffix("").parts) for p in files if p not in kit}
    for path in kit:
        needs = sorted(set(_helper_imports(path)) & left_out)
        if needs:
            raise ValueError(
                f"helper/{path.relative_to(root).as_posix()} imports {needs}, which the kit leaves out "
                f"(INSTRUCTOR_ONLY in helper/instructor/release.py): move the shared code out of the instructor's modules"
            )
    return kit


def dataset_files(repo: Path) -> List[Path]:
    """The notes and code of datasets/, never its data files (.pt, .h5, ...)."""
    keep = {".md", ".py", ".txt"}
    return sorted(p for p in (repo / "datasets").iterdir() if p.is_file() and (p.suffix in keep or p.name == ".gitignore"))


STUDENT_MAKEFILE = """\
# The student kit of the image-captioning assignment (see README.md).
#   make venv            the virtual environment .venv (pinned torch, torchvision)
#   make check           the public self-check of rnn_lstm_captioning.py, part by part
#   make notebook-check  runs the notebook again and compares it with its stored "OK" lines
#   make submit          writes rnn_lstm_captioning_submission.zip to hand in
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv check notebook-check submit

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
\t$(PYTHON) -m venv $(VENV)
\t$(PY) -m pip install --quiet --upgrade pip
\t$(PY) -m pip install --quiet -r requirements.txt
\ttouch $@

check: venv
\t$(PY) -m helper.selfcheck

notebook-check: venv
\t$(PY) -m pytest --nbval-current-env --nbval rnn_lstm_captioning.ipynb

submit: venv
\t$(PY) -m helper.submit
"""


def student_readme() -> str:
    """The kit's README.md (text kept in helper/release_readme.md next to this file)."""
    return (Path(__file__).with_name("release_readme.md")).read_text()


def write_kit(out_dir: Path, repo: Path = REPO_ROOT, force: bool = False) -> List[str]:
    """
    Write the student kit.

    Inputs:
    - out_dir: the kit's folder; it must not exist, or be empty, unless force
      (then it is replaced)
    - repo: the repository to make it from
    - force: replace an existing out_dir

    Returns:
    - the kit's files, relative to out_dir, sorted

    Raises ValueError for an occupied out_dir or a malformed solution block.
    """
    import nbformat

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise ValueError(f"{out_dir} exists and is not empty: expected a new folder (or --force to replace it)")
        if not (out_dir / MARKER).is_file():  # --force never deletes a folder that is not an earlier kit
            raise ValueError(f"{out_dir} is not empty and holds no earlier kit ({MARKER}): not replacing it")
    module_text = strip_solutions((repo / MODULE).read_text())  # these two fail before anything is written
    helpers = helper_files(repo)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-release")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "helper").mkdir(parents=True)
        (tmp / "datasets").mkdir()
        (tmp / MODULE).write_text(module_text)
        notebook = clean_notebook(nbformat.read(str(repo / NOTEBOOK), as_version=4))
        nbformat.write(notebook, str(tmp / NOTEBOOK))
        for path in helpers:
            target = tmp / path.relative_to(repo)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        for path in dataset_files(repo):
            shutil.copy2(path, tmp / "datasets" / path.name)
        for name in TOP_FILES:
            if (repo / name).exists():
                shutil.copy2(repo / name, tmp / name)
        (tmp / "Makefile").write_text(STUDENT_MAKEFILE)
        (tmp / "README.md").write_text(student_readme())
        (tmp / MARKER).write_text("made by python -m helper.release; --force may replace this folder\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helper.release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path, help="the kit's folder (new, or empty)")
    p.add_argument("--force", action="store_true", help="replace out_dir if it exists")
    p.add_argument("--json", action="store_true", help="print the list of files as JSON")
    return p


def release_command(args: argparse.Namespace) -> None:
    files = write_kit(args.out_dir, force=args.force)
    if args.json:
        print(json.dumps(files))
    else:
        print(f"wrote the student kit to {args.out_dir}: {len(files)} files")
        print("\n".join(f"  {name}" for name in files))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(build_parser(), release_command, argv)


if __name__ == "__main__":
    raise SystemExit(main())
