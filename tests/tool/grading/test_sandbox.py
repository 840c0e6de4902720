"""
The sandbox (helper.grading.sandbox) holds as root: a process inside runs as
an unprivileged user with no capabilities, sees only the interpreter and what
it was given, writes only to its own size-limited /tmp (and to folders it was
given to write), cannot remount, has no network, and cannot start more
processes than its limit. Each test runs a small program inside and checks
what it could do.
"""
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helper.grading.sandbox import Limits, bwrap_command, bwrap_path, python_paths, run_limited, sandbox_problem

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(bool(sandbox_problem()), reason=f"needs the sandbox: {sandbox_problem()}")


def inside(program: str, tmp_path: Path, readable=(), writable=(), limits=Limits(seconds=60)) -> str:
    """Run a Python program in the sandbox; what it printed (stdout and stderr)."""
    log = tmp_path / "sandbox.log"
    log.unlink(missing_ok=True)
    run_limited([sys.executable, "-c", textwrap.dedent(program)], Path("/tmp"), {"LANG": "C.UTF-8"}, limits, log,
                bwrap_path(), readable=readable, writable=writable)
    return log.read_text()


def test_the_process_inside_is_an_unprivileged_user_without_capabilities(tmp_path):
    printed = inside("""
        import os
        caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'CapBnd'))]
        print('uid', os.getuid(), os.geteuid(), 'caps', caps)
    """, tmp_path)
    words = printed.split()
    assert words[1] != "0" and words[2] != "0", printed
    assert printed.count("0000000000000000") == 3, printed


def test_the_repository_home_and_the_real_tmp_are_not_there(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("another submission")
    printed = inside(f"""
        import os
        for path in [{str(REPO / 'rnn_lstm_captioning.py')!r}, {str(REPO / 'tests')!r}, {str(REPO / 'helper')!r},
                     {str(REPO / 'datasets')!r}, '/home', '/etc/passwd', {str(secret)!r}]:
            print(path, os.path.exists(path))
        # The folders that lead to the interpreter are there, empty but for it (a venv inside the repository).
        print('repo', sorted(os.listdir({str(REPO)!r})) if os.path.isdir({str(REPO)!r}) else [])
        print('tmp', os.listdir('/tmp'))
    """, tmp_path)
    assert "True" not in printed, printed
    # /tmp holds nothing but the folders that lead to the interpreter (a clone under /tmp keeps its venv there).
    leading = sorted({p.relative_to("/tmp").parts[0] for p in python_paths() if Path("/tmp") in p.parents})
    assert f"tmp {leading}" in printed, printed
    assert printed.split("repo ")[1].splitlines()[0] in ("[]", "['.venv']"), printed


def test_given_folders_are_read_only_and_cannot_be_remounted(tmp_path):
    given = tmp_path / "given"
    given.mkdir()
    (given / "module.py").write_text("x = 1\n")
    for path in (tmp_path, given, given / "module.py"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    printed = inside(f"""
        import ctypes, subprocess
        print('read', open({str(given / 'module.py')!r}).read().strip())
        try:
            open({str(given / 'module.py')!r}, 'a').write('changed')
            print('WROTE')
        except OSError as error:
            print('write refused', error.errno)
        libc = ctypes.CDLL(None, use_errno=True)
        MS_REMOUNT, MS_BIND = 32, 4096
        code = libc.mount(None, {str(given).encode()!r}, None, MS_REMOUNT | MS_BIND, None)
        print('remount', code, ctypes.get_errno())
        print('umount', libc.umount2(b'/tmp', 0), ctypes.get_errno())
    """, tmp_path, readable=[given])
    assert "read x = 1" in printed and "write refused" in printed and "WROTE" not in printed, printed
    assert "remount -1" in printed and "umount -1" in printed, printed
    assert (given / "module.py").read_text() == "x = 1\n"


def test_tmp_is_the_only_place_to_write_and_its_size_is_limited(tmp_path):
    printed = inside("""
        import os
        chunk = b'x' * (1 << 20)
        written = 0
        try:
            with open('/tmp/fill', 'wb') as f:
                for _ in range(64):
                    f.write(chunk)
                    written += 1
        except OSError as error:
            print('full after', written, 'MB', error.errno)
        for path in ('/usr/x', '/x', os.path.dirname(os.__file__) + '/x'):
            try:
                open(path, 'w')
                print('WROTE', path)
            except OSError:
                pass
    """, tmp_path, limits=Limits(seconds=60, tmp_bytes=8 << 20))
    assert "full after" in printed and "WROTE" not in printed, printed
    assert int(printed.split("full after")[1].split()[0]) <= 8


def test_there_is_no_network_not_even_to_this_machines_loopback(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    printed = inside(f"""
        import socket
        try:
            socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'hello')
            print('CONNECTED')
        except OSError as error:
            print('refused', error)
    """, tmp_path)
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()
    assert "refused" in printed and "CONNECTED" not in printed, printed


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="the process limit is the sandbox user's, set as root")
def test_the_number_of_processes_is_limited(tmp_path):
    printed = inside("""
        import os, time
        started = 0
        for _ in range(100):
            try:
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                started += 1
            except OSError:
                break
        print('started', started)
    """, tmp_path, limits=Limits(seconds=60, processes=20))
    assert int(printed.split("started")[1].split()[0]) < 20, printed


def test_the_tmpfs_comes_before_the_binds_so_a_folder_under_tmp_can_be_given(tmp_path):
    command = bwrap_command("bwrap", readable=[Path("/tmp/x/y")])
    assert command.index("--tmpfs") < command.index("/tmp/x/y")
    assert ["--perms", "0755", "--dir", "/tmp/x"] == command[command.index("/tmp/x") - 3: command.index("/tmp/x") + 1]


def test_the_probe_names_bubblewrap_and_how_to_install_it_when_it_is_missing(monkeypatch):
    from helper.grading import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert "apt-get install bubblewrap" in sandbox._probe()
    assert subprocess.run(["true"]).returncode == 0


def test_kernel_keyrings_are_refused_so_no_key_outlives_a_sandbox(tmp_path):
    # Keyrings are kept per user, outside every namespace: a key left by one sandbox could reach the next.
    printed = inside("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        add_key, keyctl = (248, 250) if __import__('platform').machine() == 'x86_64' else (217, 219)
        print('add_key', libc.syscall(add_key, b'user', b'grader', b'secret', 6, -4), ctypes.get_errno())
        print('keyctl', libc.syscall(keyctl, 0, -4, 0), ctypes.get_errno())
    """, tmp_path)
    assert "add_key -1 1" in printed and "keyctl -1 1" in printed, printed  # EPERM
