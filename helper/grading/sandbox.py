"""
Run an untrusted process (a submission's worker, its notebook) with limits,
inside bubblewrap.

Limits (resource.setrlimit, in the child before it starts): address space,
CPU seconds, the size of any file it writes, no core files, and, when the
grader runs as root, the number of processes of the sandbox's own user. A
wall-clock limit kills the whole process group.

The sandbox (bwrap, Debian package "bubblewrap"): a new, empty root holding
only what the process needs, read-only (the system's /usr, the Python
installation and the virtual environment, and the folders passed as
`readable`); a size-limited tmpfs at /tmp, the only place it can write
(`writable` folders besides, where the caller asks); no network (a new
network namespace with only the loopback device); its own process, IPC and
UTS namespaces; no kernel keyrings (a seccomp filter: they are kept per user,
outside every namespace); killed with its parent. Run by root, the process inside runs
as an unprivileged user of its own (SANDBOX_UID, or the uid given) with every
capability dropped and no way to gain one (setpriv --no-new-privs): it
cannot remount, write or read what it was not given, or signal the grader.
Run by another user, bwrap makes a user namespace and drops its capabilities.
The repository, the data sets, /home, /work, the real /tmp and other
submissions are not in the sandbox at all.
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

SANDBOX_UID = 65534  # "nobody"; the batch grader gives each job a uid of its own
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"
SIGNAL_NAMES = {
    signal.SIGSEGV: "a segmentation fault (SIGSEGV)",
    signal.SIGKILL: "killed (SIGKILL: the time limit, or out of memory)",
    signal.SIGXFSZ: "wrote more than the output limit (SIGXFSZ)",
    signal.SIGXCPU: "used up its CPU time (SIGXCPU)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGBUS: "a bus error (SIGBUS)",
    signal.SIGFPE: "a floating-point exception (SIGFPE)",
}


class SandboxUnavailable(OSError):
    """The sandbox does not work here (the message says why and how to install it)."""


@dataclass
class Limits:
    """What one sandboxed process may use."""

    seconds: float = 600.0  # wall clock
    memory_bytes: int = 6 << 30  # address space; torch alone maps about 3 GiB
    file_bytes: int = 64 << 20  # any single file written, the log included
    tmp_bytes: int = 512 << 20  # the whole writable /tmp
    processes: int = 512  # processes and threads of the sandbox's user (as root only)


def describe_exit(returncode: Optional[int], timed_out: bool = False) -> str:
    """'' for a normal exit, else why a process ended, in words."""
    if timed_out:
        return "ran past its time limit and was stopped"
    if returncode is not None and returncode < 0:
        return SIGNAL_NAMES.get(-returncode, f"killed by signal {-returncode}")
    if returncode is not None and returncode > 128 and returncode - 128 in SIGNAL_NAMES:  # bwrap reports signals so
        return SIGNAL_NAMES[returncode - 128]
    return ""


def _system_binds() -> list:
    """bwrap arguments for the system: /usr, the top-level links into it, the loader's cache."""
    arguments = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            arguments += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            arguments += ["--ro-bind", str(path), str(path)]
    for name in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/nsswitch.conf"):
        if os.path.exists(name):
            arguments += ["--ro-bind", name, name]
    return arguments


def python_paths() -> list:
    """The folders this interpreter runs from: its installation and its virtual environment, links resolved too."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
             Path(sys.executable).resolve().parent.parent}
    return sorted(p for p in paths if p.is_dir() and not str(p).startswith("/usr"))


def _binds(option: str, paths: Sequence[Path]) -> list:
    """
    bwrap arguments binding each path at itself, parents first, those inside
    another one left out. Their parent folders are made first, open to all
    (bwrap would make them private to root, and the sandbox's user could not
    reach what is bound inside).
    """
    paths = sorted({Path(p) for p in paths})
    arguments, made = [], {Path("/"), Path("/tmp")}
    for path in paths:
        if any(other in path.parents for other in paths):
            continue
        for parent in reversed(path.parents):
            if parent not in made:
                arguments += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        arguments += [option, str(path), str(path)]
    return arguments


# Kernel keyrings are kept per user, outside every namespace: a sandbox could leave a key that a later
# sandbox of the same user reads. A seccomp filter (classic BPF) refuses their system calls with EPERM,
# as it refuses every system call of another architecture (x86-64's x32 ABI included).
KEYRING_CALLS = {"x86_64": (0xC000003E, (248, 249, 250)), "aarch64": (0xC00000B7, (217, 218, 219))}
_SECCOMP = {}


def seccomp_program() -> Optional[bytes]:
    """The filter as bytes for bwrap --seccomp, or None on an architecture it does not know."""
    import platform
    import struct

    if platform.machine() not in KEYRING_CALLS:
        return None
    arch, calls = KEYRING_CALLS[platform.machine()]
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    checks = [(jge, 0x40000000)] if platform.machine() == "x86_64" else []
    checks += [(jeq, number) for number in calls]
    # 0: A = arch; 1: foreign -> deny; 2: A = number; then each check jumps to the last instruction (deny).
    program = [(load, 0, 0, 4), (jeq, 0, len(checks) + 2, arch), (load, 0, 0, 0)]
    program += [(op, len(checks) - i, 0, k) for i, (op, k) in enumerate(checks)]
    program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def seccomp_file() -> Optional[str]:
    """A file holding seccomp_program(), written once per process (None where there is no filter)."""
    if "path" not in _SECCOMP:
        program = seccomp_program()
        path = None
        if program is not None:
            import tempfile

            import atexit

            descriptor, path = tempfile.mkstemp(prefix="sandbox-seccomp-", suffix=".bpf")
            os.write(descriptor, program)
            os.close(descriptor)
            atexit.register(os.unlink, path)
        _SECCOMP["path"] = path
    return _SECCOMP["path"]


def bwrap_command(bwrap: str, readable: Sequence[Path] = (), writable: Sequence[Path] = (),
                  cwd: Optional[Path] = None, limits: Limits = Limits(), uid: Optional[int] = None,
                  env: Optional[Dict[str, str]] = None) -> list:
    """
    The command prefix that runs a program in the sandbox (see the module
    docstring); env, when given, is the program's whole environment.
    """
    command = [bwrap, *_system_binds(), "--proc", "/proc", "--dev", "/dev"]
    # The tmpfs first: what is bound after it may lie under /tmp (a clone or a scratch folder there).
    command += ["--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    command += _binds("--ro-bind", [*python_paths(), *readable])
    command += _binds("--bind", writable)
    command += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--die-with-parent", "--new-session", "--chdir", str(cwd or "/tmp")]
    if env is not None:
        command += ["--clearenv", *(a for name, value in env.items() for a in ("--setenv", name, value))]
    seccomp = seccomp_file()
    if seccomp is not None:  # bwrap reads the filter from a descriptor: the shell opens the file as 9
        command = ["/bin/sh", "-c", 'exec "$@" 9<"$0"', seccomp, *command, "--seccomp", "9"]
    if os.geteuid() == 0:
        user = str(SANDBOX_UID if uid is None else uid)
        command += ["--", shutil.which("setpriv") or "/usr/bin/setpriv", "--reuid", user, "--regid", user,
                    "--clear-groups", "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs"]
    else:
        command += ["--unshare-user", "--cap-drop", "ALL"]
    return command + ["--"]


_PROBED: Dict[str, str] = {}


def sandbox_problem() -> str:
    """'' when the sandbox works here, else why not (and how to get it)."""
    if "result" not in _PROBED:
        _PROBED["result"] = _probe()
    return _PROBED["result"]


def _probe() -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}"
    if os.geteuid() == 0 and not (shutil.which("setpriv") or os.path.exists("/usr/bin/setpriv")):
        return "setpriv (util-linux) is missing: the sandbox cannot drop root's privileges"
    command = bwrap_command(bwrap, limits=Limits(tmp_bytes=1 << 20)) + [sys.executable, "-c", "import os"]
    try:
        completed = subprocess.run(command, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap does not start here ({error})"
    if completed.returncode != 0:
        last = (completed.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return f"bubblewrap does not work here ({last[:200]}); user namespaces may be switched off"
    return ""


def bwrap_path() -> Optional[str]:
    """bwrap when the sandbox works here, else None."""
    return None if sandbox_problem() else shutil.which("bwrap")


def sandbox_note(bwrap: Optional[str]) -> str:
    """One line for the reports: how submissions are contained."""
    if bwrap:
        return (f"bubblewrap ({bwrap}): an unprivileged user, nothing but the interpreter and the files under "
                f"test, a size-limited /tmp, no network; limits applied")
    return "NO SANDBOX (--no-sandbox): submissions ran with time and memory limits only, as this user"


def preexec(limits: Limits):
    """A function applying limits in the child, before it runs the program."""

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        cpu = int(limits.seconds) + 30
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.geteuid() == 0:  # counts the sandbox user's processes (root itself is never limited)
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

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


def kill_group(process: subprocess.Popen) -> None:
    """Kill the process and everything it started (its session), then reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


@dataclass
class Outcome:
    """How a run ended."""

    returncode: Optional[int]
    timed_out: bool
    seconds: float
    log_tail: str

    def describe(self) -> str:
        return describe_exit(self.returncode, self.timed_out)


def run_limited(command: Sequence[str], cwd: Path, env: Dict[str, str], limits: Limits, log: Path,
                bwrap: Optional[str] = None, readable: Sequence[Path] = (), writable: Sequence[Path] = (),
                uid: Optional[int] = None) -> Outcome:
    """
    Run command to its end with limits, in the sandbox when bwrap is given, its output to log.

    Returns:
    - the Outcome; the process group is killed at the time limit
    """
    prefix = bwrap_command(bwrap, readable, writable, cwd, limits, uid) if bwrap else []
    start = time.monotonic()
    with open(log, "ab") as out:
        process = subprocess.Popen([*prefix, *command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=preexec(limits), start_new_session=True)
        timed_out = False
        try:
            process.wait(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        kill_group(process)  # also what it left running
    return Outcome(process.returncode, timed_out, time.monotonic() - start, read_tail(log))
