"""
The student kit (`python -m helper.release OUT_DIR`): solutions out, hints in,
nothing of the grading suite, a kit that imports, a notebook that stops at
the first piece still to write, and, with the reference module copied in,
a notebook that passes nbval.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from _kit import MODULE, NOTEBOOK, REPO_ROOT, copy_kit, kit_texts, make_kit, reference_source
from helper.instructor import release
from helper.kit import rubric
from helper.instructor.release import solution_blocks, strip_solutions, write_kit

# The graded functions' independent references of the grading suite: none of their lines may reach students.
REFERENCE_FUNCTIONS = ("rnn_step", "rnn_loop", "lstm_step", "attention", "attention_lstm", "temporal_loss")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_kit(tmp_path_factory.mktemp("release"))


SAMPLE = '''
def f(x):
    """Doc."""
    # BEGIN SOLUTION
    # HINT: TODO: double x.
    # HINT:    (indented continuation)
    y = 2 * x
    # END SOLUTION
    return y


class C:
    def m(self):
        # BEGIN SOLUTION
        # HINT: TODO: one.
        return 1
        # END SOLUTION
'''


def test_strip_solutions_keeps_hints_and_names_the_function():
    out = strip_solutions(SAMPLE)
    assert "y = 2 * x" not in out and "return 1\n" not in out
    assert "    # TODO: double x.\n    #    (indented continuation)\n" in out
    assert "raise NotImplementedError('f is not implemented yet" in out
    assert "raise NotImplementedError('C.m is not implemented yet" in out
    assert out.count("# BEGIN SOLUTION") == 2 and out.count("# END SOLUTION") == 2
    ast.parse(out)


@pytest.mark.parametrize("broken, message", [
    (SAMPLE.replace("    # HINT: TODO: double x.\n    # HINT:    (indented continuation)\n", ""), "of f has no '# HINT:'"),
    (SAMPLE.replace("    # END SOLUTION\n    return y", "    return y"), "line 13: # BEGIN SOLUTION inside the block"),
    (SAMPLE.replace("        # END SOLUTION\n", ""), "line 14: # BEGIN SOLUTION of C.m without an # END SOLUTION"),
    (SAMPLE.replace("        # BEGIN SOLUTION\n", ""), "without a # BEGIN SOLUTION"),
    ("def f():\n    return 1\n", "no '# BEGIN SOLUTION' blocks"),
])
def test_malformed_blocks_are_refused_with_the_line(broken, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(broken)


def test_every_block_of_the_reference_has_numbered_hints():
    blocks = solution_blocks(reference_source())
    assert len(blocks) >= 15
    for block in blocks:
        assert block["hints"][0].startswith("TODO"), block["owner"]
        assert any(h.startswith("1. ") for h in block["hints"]), f"{block['owner']}: hints without numbered steps"


def _solution_lines(source: str):
    """Code lines inside the blocks that are not also given code outside them (20 characters or more)."""
    lines = source.splitlines()
    inside = set()
    for block in solution_blocks(source):
        inside.update(range(block["begin"], block["end"] + 1))
    given = {line.strip() for i, line in enumerate(lines) if i not in inside}
    code = {line.strip() for block in solution_blocks(source) for line in block["code"]}
    return {line for line in code if len(line) >= 20 and line not in given}


def test_no_solution_line_anywhere_in_the_kit(kit):
    lines = _solution_lines(reference_source())
    assert len(lines) > 40
    texts = kit_texts(kit)
    leaks = [(line, name) for line in lines for name, text in texts.items()
             if line in text]
    assert leaks == []


def test_no_reference_implementation_or_grading_code_in_the_kit(kit):
    names = set(kit_texts(kit))
    assert not any(name.startswith("tests/") or "/test_" in name or name.startswith("test_") for name in names)
    assert not any(Path(name).stem in ("_references", "_grading", "conftest", "mutants") for name in names)
    helpers = [name[len("helper/"):] for name in names if name.startswith("helper/")]
    assert helpers and not any(release.is_instructor_only(name) for name in helpers)
    assert not any(name.startswith("instructor/") for name in helpers)
    tree = ast.parse((REPO_ROOT / "tests" / "_references.py").read_text())
    body_lines = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in REFERENCE_FUNCTIONS:
            for statement in node.body[1:]:  # after the docstring
                body_lines.update(ast.unparse(statement).splitlines())
    body_lines = {line.strip() for line in body_lines if len(line.strip()) >= 20}
    assert len(body_lines) > 10
    texts = kit_texts(kit)
    leaks = [(line, name) for line in body_lines for name, text in texts.items()
             if line in text]
    assert leaks == []


def test_the_kit_has_what_students_need_and_no_data(kit):
    names = set(kit_texts(kit))
    for needed in (MODULE, NOTEBOOK, "README.md", "Makefile", "requirements.txt", "datasets/README.md",
                   "helper/selfcheck.py", "helper/submit.py", "helper/kit/rubric.py", "helper/kit/public_expected.py"):
        assert needed in names
    assert not [n for n in names if Path(n).suffix in (".pt", ".h5", ".hdf5", ".zip")]
    readme = (kit / "README.md").read_text()
    for topic in ("Colab", "make venv", "helper.selfcheck", "helper.submit", "not the grade"):
        assert topic in readme
    makefile = (kit / "Makefile").read_text()
    assert "helper.selfcheck" in makefile and "helper.submit" in makefile and "tests" not in makefile


@pytest.mark.slow  # imports each module of the kit in a process of its own
def test_the_kit_imports_with_every_helper_module(kit):
    modules = sorted(".".join(Path(n).with_suffix("").parts) for n in kit_texts(kit)
                     if n.startswith("helper/") and n.endswith(".py"))
    api = sorted({name for part in rubric.PARTS for name in part.api})
    code = (f"import importlib, rnn_lstm_captioning as m\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"missing = [a for a in {api!r} if not hasattr(m, a)]\n"
            f"assert not missing, missing\n"
            f"assert m.__file__.startswith({str(kit)!r}), m.__file__")
    done = subprocess.run([sys.executable, "-c", code], cwd=kit, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_notebook_keeps_only_safe_outputs(kit):
    notebook = nbformat.read(str(kit / NOTEBOOK), as_version=4)
    original = nbformat.read(str(REPO_ROOT / NOTEBOOK), as_version=4)
    kept = 0
    for cell, before in zip(notebook.cells, original.cells):
        assert cell.source == before.source  # nothing of the notebook's text changes
        if cell.cell_type != "code":
            continue
        if before.outputs and not cell.outputs:
            assert cell.execution_count is None  # cleared with its outputs
        if cell.outputs:
            kept += 1
            assert cell.execution_count is not None  # nbval needs it to compare
            assert "NBVAL_IGNORE_OUTPUT" not in cell.source and "NBVAL_SKIP" not in cell.source
            assert all(out.output_type == "stream" and out.name == "stdout" for out in cell.outputs)
            assert [out.text for out in cell.outputs] == [out.text for out in before.outputs]
    assert kept >= 10  # the checks' "OK" lines stay, for nbval
    assert "helper.submit" in notebook.cells[-1].source


def test_an_occupied_folder_is_not_replaced(tmp_path, kit):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    for force in (False, True):
        with pytest.raises(ValueError, match="mine"):
            write_kit(foreign, repo=kit.parent / "source", force=force)
    assert (foreign / "thesis.tex").read_text() == "keep me"
    again = copy_kit(kit, tmp_path / "again")
    (again / "stale.txt").write_text("old")
    write_kit(again, repo=kit.parent / "source", force=True)  # an earlier kit is replaced
    assert not (again / "stale.txt").exists() and (again / MODULE).is_file()
    assert not list(tmp_path.glob(".*tmp-release"))


def test_a_kit_module_that_imports_an_instructor_module_stops_the_release(tmp_path, kit):
    new_tool = kit.parent / "source" / "helper" / "captioning" / "new_tool.py"
    new_tool.write_text('"""?"""\n\n\ndef f():\n    from helper.instructor.grade_model import parse_table\n')
    try:
        with pytest.raises(ValueError, match=r"captioning/new_tool\.py imports .*helper\.instructor\.grade_model.*leaves out"):
            write_kit(tmp_path / "k", repo=kit.parent / "source")
        assert not (tmp_path / "k").exists()
    finally:
        new_tool.unlink()


@pytest.mark.slow  # runs a notebook or a second release
def test_release_command(tmp_path, kit):
    out = tmp_path / "cli-kit"
    done = subprocess.run([sys.executable, "-m", "helper.release", str(out)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    if BEGIN_IN_PLACE:
        assert done.returncode == 0, done.stderr
        assert f"wrote the student kit to {out}" in done.stdout and (out / ".student-kit").is_file()
    else:  # a solution without blocks is in place: the release refuses it rather than hand it out
        assert done.returncode == 1 and "no '# BEGIN SOLUTION' blocks" in done.stderr
    again = subprocess.run([sys.executable, "-m", "helper.release", str(tmp_path)], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr


BEGIN_IN_PLACE = release.BEGIN in (REPO_ROOT / MODULE).read_text()


def _data_env():
    """The kernel's environment: the repo's data folder, so the shapes data set is generated once for all."""
    return {**os.environ, "CAPTIONING_DATA_DIR": os.environ.get("CAPTIONING_DATA_DIR", str(REPO_ROOT / "datasets"))}


@pytest.mark.slow  # runs a notebook or a second release
def test_the_kit_notebook_stops_at_the_first_piece_to_write(tmp_path, kit, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    from helper.dev.notebook import execute_notebook

    for key, value in _data_env().items():
        monkeypatch.setenv(key, value)
    copy = copy_kit(kit, tmp_path / "run")
    with pytest.raises(CellExecutionError) as error:
        execute_notebook(copy / NOTEBOOK, timeout=600)
    message = str(error.value)
    assert "NotImplementedError" in message
    assert "rnn_step_forward is not implemented yet" in message


@pytest.mark.slow  # runs a notebook or a second release
def test_the_reference_in_the_kit_passes_nbval(tmp_path, kit):
    copy = copy_kit(kit, tmp_path / "solved", with_reference=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-current-env", "--nbval",
               NOTEBOOK]
    done = subprocess.run(command, cwd=copy, env=_data_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
