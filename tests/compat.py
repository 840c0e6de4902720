"""
Colab's versions, checked: the notebook imports helper/ and the module with
whatever torch the Colab runtime has, never with our pins (requirements.txt),
so the reference must earn full marks and the notebook must pass nbval with
the oldest torch a student can pin on Colab and with the newest there is.

    .venv/bin/python tests/compat.py [--only torch2.6 ...] [--root .venv-compat]

For each pairing of PAIRINGS (the table the README quotes):
1. a virtual environment of its own, ROOT/NAME, with the pairing's pins and
   the other requirements unpinned; reused while its stamp records the same
   requirements (the Makefile's .venv/.installed does the same for .venv);
   the pairings' venvs are built side by side, then tested one by one;
2. `pytest tests/grading` with the reference module must give full marks
   (the grade JSON's total, not only pytest's exit status);
3. `pytest --nbval rnn_lstm_captioning.ipynb` must pass.
Only the grading tests and the notebook, once per pairing: this runs in CI.
Prints a line per pairing and step, and exits non-zero when one fails.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "rnn_lstm_captioning.ipynb"
STAMP = ".installed"


@dataclass(frozen=True)
class Pairing:
    """One torch and torchvision (and numpy where the runtime fixes it) to check, and why these."""

    name: str
    python: str  # "3.11": the interpreter's major.minor version
    torch: str
    torchvision: str
    numpy: Optional[str]  # None: the newest that installs with the rest
    why: str

    def pins(self) -> Dict[str, str]:
        """{package: version} for the packages this pairing fixes."""
        pins = {"torch": self.torch, "torchvision": self.torchvision}
        return {**pins, "numpy": self.numpy} if self.numpy else pins


PAIRINGS = (
    Pairing("torch2.6", "3.11", "2.6.0", "0.21.0", "2.0.2",
            "the oldest runtime Colab lets a student pin, with its Python and numpy"),
    Pairing("torch2.15", "3.13", "2.15.0", "0.29.2", None,
            "the newest torch on the package registry, the newest torchvision made for it, "
            "and the Python of Colab's current runtime"),
)


def requirement_name(line: str) -> str:
    """The package a requirements.txt line names ("torch==2.14.1" -> "torch"), lower case; "" for none."""
    line = line.split("#", 1)[0].strip()
    return re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() if line else ""


def requirements(pairing: Pairing) -> str:
    """
    requirements.txt for the pairing: its pins, and every other package of
    ours without a version, as a student's runtime has whatever is newest.
    """
    names = [requirement_name(line) for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    pins = pairing.pins()
    lines = [f"{name}=={pins[name]}" if name in pins else name for name in names if name]
    lines += [f"{name}=={v}" for name, v in pins.items() if name not in names]
    return "\n".join([f"# Python {pairing.python}", *lines]) + "\n"


def find_python(version: str) -> Path:
    """
    An interpreter of Python `version` ("3.13"): this one where it matches,
    else one installed by pyenv or the system. FileNotFoundError if none.
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return Path(getattr(sys, "_base_executable", sys.executable))
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [*sorted(pyenv.glob(f"versions/{version}.*/bin/python{version}"), reverse=True),
                  Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no Python {version} here (looked in {pyenv}/versions, /usr/bin, /usr/local/bin)")


def pip_environment() -> dict:
    """
    The environment for pip: no constraints file. A machine may cap torch at
    the pins of requirements.txt (a pip constraints file in its configuration);
    the pairings are exact pins of their own, so the cap must not apply here.
    """
    return {**os.environ, "PIP_CONSTRAINT": os.devnull, "PIP_NO_CACHE_DIR": "1"}


def build_venv(pairing: Pairing, root: Path) -> tuple:
    """(the venv's python, what to print): ROOT/NAME built, or reused when its stamp holds these requirements."""
    venv = root / pairing.name
    wanted = requirements(pairing)
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text() == wanted and (venv / "bin" / "python").is_file():
        return venv / "bin" / "python", "reused"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([str(find_python(pairing.python)), "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    (venv / "requirements.txt").write_text(wanted)
    # No pip cache (PIP_NO_CACHE_DIR): the wheels are gigabytes, and a built venv is reused instead.
    for command in (["install", "--quiet", "--upgrade", "pip"],
                    ["install", "--quiet", "-r", str(venv / "requirements.txt")]):
        completed = subprocess.run([str(python), "-m", "pip", *command], env=pip_environment(),
                                   capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"pip {' '.join(command)} failed:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}")
    stamp.write_text(wanted)
    return python, "built"


def installed(python: Path) -> str:
    """"torch X, torchvision Y, numpy Z, Python W" as the venv has them."""
    code = ("import sys, numpy, torch, torchvision; "
            "print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {numpy.__version__}, "
            "Python {sys.version.split()[0]}')")
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def run_environment() -> dict:
    """The environment for the tests: the repository's own module under test, the checks beyond it not strict."""
    return {**os.environ, "CAPTIONING_IMPL": "", "CAPTIONING_BEYOND": ""}


def full_marks(python: Path, scratch: Path) -> tuple:
    """(whether `pytest tests/grading` gives the reference full marks, what to print)."""
    grade_file = scratch / "grade.json"
    command = [str(python), "-m", "pytest", "tests/grading", f"--grade-json={grade_file}", "-q", "--tb=line",
               "-p", "no:xdist"]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=run_environment(), capture_output=True, text=True)
    if not grade_file.is_file():
        return False, f"no grade written:\n{completed.stdout[-3000:]}{completed.stderr[-2000:]}"
    grade = json.loads(grade_file.read_text())
    failed = [t["nodeid"] + ": " + t["message"] for t in grade["tests"] if t["outcome"] != "passed"]
    verdict = f"{grade['total']:g} / {grade['max_total']:g} points"
    good = completed.returncode == 0 and grade["total"] == grade["max_total"] and not failed
    tail = "" if good else f"\n{completed.stdout[-3000:]}"
    return good, "\n    ".join([verdict, *failed]) + tail


def notebook_passes(python: Path) -> tuple:
    """(whether the notebook passes nbval in the venv's kernel, what to print)."""
    command = [str(python), "-m", "pytest", "--nbval-current-env", "--nbval", NOTEBOOK, "-q", "--tb=short",
               "-p", "no:xdist"]
    completed = subprocess.run(command, cwd=REPO_ROOT, env=run_environment(), capture_output=True, text=True)
    summary = [line for line in completed.stdout.splitlines() if " passed" in line or " failed" in line]
    tail = "" if completed.returncode == 0 else "\n" + completed.stdout[-6000:] + completed.stderr[-2000:]
    return completed.returncode == 0, "; ".join(summary[-1:]) + tail


def build_all(pairings, root: Path) -> dict:
    """
    {pairing name: its venv's python, or None where the build failed}, the
    venvs built side by side: a build mostly waits on the download and the
    disk (gigabytes of wheels, CUDA's included), not on the CPU.
    """
    def build(pairing: Pairing):
        started = time.monotonic()
        try:
            python, how = build_venv(pairing, root)
        except (RuntimeError, FileNotFoundError, subprocess.CalledProcessError) as error:
            print(f"{pairing.name}: venv: FAILED: {error}", flush=True)
            return None
        print(f"{pairing.name}: venv {how}: {installed(python)} ({time.monotonic() - started:.0f} s)", flush=True)
        return python

    with ThreadPoolExecutor(max_workers=len(pairings) or 1) as pool:
        return dict(zip([p.name for p in pairings], pool.map(build, pairings)))


def check(pairing: Pairing, python: Path) -> bool:
    """Grade the reference and run the notebook with the pairing's venv; print each step."""
    with tempfile.TemporaryDirectory() as scratch:
        started = time.monotonic()
        graded, text = full_marks(python, Path(scratch))
    print(f"{pairing.name}: grading tests: {'full marks' if graded else 'NOT full marks'}: {text} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    started = time.monotonic()
    passed, text = notebook_passes(python)
    print(f"{pairing.name}: notebook under nbval: {'passes' if passed else 'FAILS'}: {text} "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    return graded and passed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[p.name for p in PAIRINGS],
                        choices=[p.name for p in PAIRINGS], help="the pairings to check")
    parser.add_argument("--root", type=Path, default=REPO_ROOT / ".venv-compat",
                        help="where the venvs live (git-ignored)")
    args = parser.parse_args(argv)
    pairings = [p for p in PAIRINGS if p.name in args.only]
    pythons = build_all(pairings, args.root)
    # The tests one pairing at a time: they use every core.
    results = [pythons[p.name] is not None and check(p, pythons[p.name]) for p in pairings]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
