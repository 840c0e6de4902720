"""
Run an untrusted command (a submission's checks) in its scratch folder,
with limits, and inside bubblewrap where the machine has it.

Limits (resource.setrlimit, in the child before it starts): address space
(memory), CPU seconds, the size of any file it writes (so megabytes of
printed output end in SIGXFSZ, not a full disk), no core files; a wall-clock
time limit kills the whole process group.

bubblewrap (`bwrap`, Debian package "bubblewrap"): the whole file system
read-only, an empty /tmp, the scratch folder the only writable place (with
given sub-folders read-only again), no network (a new network namespace
holds only the loopback device), its own process and IPC namespaces, killed
with the grader. Without bwrap the command runs with the limits only, and
`sandbox_note` says so.
"""
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

SIGNAL_NAMES = {
    signal.SIGSEGV: "a segmentation fault (SIGSEGV)",
    signal.SIGKILL: "killed (SIGKILL: the time limit, or out of memory)",
    signal.SIGXFSZ: "wrote more than the output limit (SIGXFSZ)",
    signal.SIGXCPU: "used up its CPU time (SIGXCPU)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGBUS: "a bus error (SIGBUS)",
    signal.SIGFPE: "a floating-point exception (SIGFPE)",
}


@dataclass
class Limits:
    """What one run may use."""

    seconds: float = 600.0  # wall clock
    memory_bytes: int = 6 << 30  # address space; torch alone maps about 3 GiB
    file_bytes: int = 64 << 20  # any single file written, the log included


@dataclass
class Outcome:
    """How a run ended."""

    returncode: Optional[int]
    timed_out: bool
    seconds: float
    log_tail: str

    def describe(self) -> str:
        """'' for a normal exit (0 or 1, pytest's), else why it ended, in words."""
        if self.timed_out:
            return "ran past its time limit and was stopped"
        code = self.returncode
        if code is not None and code < 0:
            return SIGNAL_NAMES.get(-code, f"killed by signal {-code}")
        if code is not None and code >= 128 + 1 and code - 128 in SIGNAL_NAMES:  # bwrap reports signals so
            return SIGNAL_NAMES[code - 128]
        return ""


def bwrap_path() -> Optional[str]:
    """The bwrap program when it exists and works here (user namespaces allowed), else None."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    probe = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--", "true"]
    try:
        ok = subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return path if ok else None


def sandbox_note(bwrap: Optional[str]) -> str:
    """One line for the report: how submissions are contained."""
    if bwrap:
        return f"bubblewrap ({bwrap}): read-only file system but the scratch folder, no network; limits applied"
    return (
        "NO SANDBOX: bubblewrap (bwrap) is missing or cannot create namespaces here; submissions ran with "
        "time, memory and file-size limits only, and could read and write what this user can"
    )


def _needed_under_tmp() -> list:
    """The virtual environment and the repository (helper/'s parent) when they are under /tmp."""
    # Both the path the interpreter runs from and its target: a venv may be a symlink.
    needed = {Path(sys.prefix), Path(sys.prefix).resolve(), Path(__file__).resolve().parents[2]}
    return sorted(path for path in needed if Path("/tmp") in path.parents)


def _bind_back(paths: Sequence[Path]) -> list:
    """bwrap arguments that restore these paths under the empty /tmp, read-only, parents first."""
    arguments = []
    for path in sorted(paths):
        if any(other in path.parents for other in paths):
            continue  # inside a folder bound back already, symlink included
        if path.is_symlink():  # bwrap cannot mount onto a symlink: recreate it (its target is bound too)
            arguments += ["--symlink", os.readlink(path), str(path)]
        else:
            arguments += ["--ro-bind", str(path), str(path)]
    return arguments


def bwrap_command(bwrap: str, scratch: Path, read_only: Sequence[Path], cwd: Path) -> list:
    """The bwrap prefix: / read-only, empty /tmp, scratch writable, read_only folders in it read-only."""
    command = [
        bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
    ]
    # The empty /tmp must not hide the interpreter and this package, should they live there (a clone
    # in /tmp, as CI's may be): bound back read-only.
    command += _bind_back(_needed_under_tmp())
    command += ["--bind", str(scratch), str(scratch)]
    for path in read_only:
        command += ["--ro-bind", str(path), str(path)]
    command += [
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
        "--new-session", "--chdir", str(cwd), "--",
    ]
    return command


def _set_limits(limits: Limits):
    """A preexec function applying limits (runs in the child, before exec)."""

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        cpu = int(limits.seconds) + 30
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def read_tail(path: Path, size: int = 4000) -> str:
    """The last size bytes of a file as text ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_limited(
    command: Sequence[str],
    scratch: Path,
    cwd: Path,
    env: Dict[str, str],
    limits: Limits,
    log: Path,
    bwrap: Optional[str] = None,
    read_only: Sequence[Path] = (),
) -> Outcome:
    """
    Run command with limits, in bwrap when given, its output to log.

    Inputs:
    - command: the program and its arguments
    - scratch: the folder it may write (inside bwrap, the only one)
    - cwd: its working directory
    - env: its whole environment
    - limits: see Limits
    - log: file for stdout and stderr together
    - bwrap: path of bwrap, or None to run without a sandbox
    - read_only: folders under scratch kept read-only inside bwrap

    Returns:
    - the Outcome; the process group is killed at the time limit
    """
    full = (bwrap_command(bwrap, scratch, read_only, cwd) if bwrap else []) + list(command)
    start = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            full, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_set_limits(limits), start_new_session=True,
        )
        timed_out = False
        try:
            process.wait(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
    return Outcome(process.returncode, timed_out, time.monotonic() - start, read_tail(log))


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the process and everything it started (its session), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
