"""
The shape of helper/, as a maintainer finds it: subpackages by job, commands as thin wrappers, no import circle,
files and classes short enough to read in one sitting.
"""
import ast
from pathlib import Path

import pytest

HELPER = Path(__file__).resolve().parents[3] / "helper"
SUBPACKAGES = ("common", "data", "captioning", "grading", "kit", "instructor", "dev")
MAX_FILE_LINES = 600
MAX_CLASS_LINES = 150


def module_name(path: Path) -> str:
    parts = path.relative_to(HELPER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(HELPER.rglob("*.py")) if "__pycache__" not in p.parts}
COMMANDS = sorted(name for name, path in MODULES.items() if path.parent == HELPER and path.stem != "__init__")


def imports_of(name: str) -> set:
    """The helper modules a module imports, at its top or inside functions."""
    path = MODULES[name]
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {target for target in found if target in MODULES and target != name}


def find_circle(graph: dict):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state:
                circle = visit(target, trail + [target])
                if circle:
                    return circle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            circle = visit(start, [start])
            if circle:
                return circle
    return None


def test_the_circle_finder_finds_a_circle_through_an_import_inside_a_function():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_helper_has_no_import_circle():
    graph = {name: imports_of(name) for name in MODULES}
    assert find_circle(graph) is None


def test_helper_is_split_by_job_into_subpackages_that_say_what_they_hold():
    for package in SUBPACKAGES:
        init = HELPER / package / "__init__.py"
        assert init.is_file(), f"helper/{package}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text())), f"helper/{package}/__init__.py: say what it holds"
    strays = [p.name for p in HELPER.iterdir() if p.is_dir() and p.name not in SUBPACKAGES + ("__pycache__",)]
    assert strays == []


def test_commands_are_thin_wrappers_that_no_helper_module_imports():
    assert {"train", "evaluate", "caption", "demo", "selfcheck", "submit", "release", "grade"} <= {
        c.split(".")[-1] for c in COMMANDS
    }
    for command in COMMANDS:
        tree = ast.parse(MODULES[command].read_text())
        assert ast.get_docstring(tree), f"{command}: a docstring says what the command does"
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], (
            f"{command} defines code; a command only imports its main from a subpackage"
        )
        assert len(MODULES[command].read_text().splitlines()) <= 12
    importers = {name: imports_of(name) & set(COMMANDS) for name in MODULES}
    assert {name: found for name, found in importers.items() if found} == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_and_classes_are_short_enough_to_read_in_one_sitting(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_FILE_LINES
    long_classes = [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
    ]
    assert long_classes == []
