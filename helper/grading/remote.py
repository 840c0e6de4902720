"""
The judge's side of the worker: start it (in the sandbox), ask it to do
things, and stop it when a call crashes it or runs past its time.

    worker = Worker(Path("student/rnn_lstm_captioning.py"), bwrap="/usr/bin/bwrap")
    module = worker.module()                     # a Remote: the module, in the worker
    next_h, cache = module.rnn_step_forward(x, prev_h, Wx, Wh, b)   # tensors come back by value
    rnn = module.RNN(3, 5)                       # other objects stay there: a Remote
    params = worker.probe("parameters", rnn)     # {"Wx": tensor, ...}
    worker.close()

A call that the module fails raises RemoteError (its type and message); a
worker that dies, hangs past the time limit or sends a malformed reply is
stopped and raises WorkerLost, and the next request starts a new worker (a
new generation: the Remotes of the old one are gone, StaleRemote).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from helper.grading import protocol
from helper.grading.sandbox import Limits, bwrap_command, describe_exit, kill_group, preexec

ENGINE = Path(__file__).resolve().parent
# What the worker runs: these files alone are copied into its sandbox, never the repository.
WORKER_FILES = ("__init__.py", "protocol.py", "probes.py", "worker.py")
MODULE_NAME = "rnn_lstm_captioning.py"


class RemoteError(Exception):
    """The module raised an exception (or returned what cannot be sent)."""

    def __init__(self, type_name: str, message: str, where: str = "", not_implemented: bool = False):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message, self.where, self.not_implemented = type_name, message, where, not_implemented


class WorkerLost(Exception):
    """The worker died, ran past its time or broke the protocol; it was stopped."""


class StaleRemote(WorkerLost):
    """An object of a worker that was stopped since."""


class Remote:
    """An object in the worker: attribute access and calls go there; tensors come back by value."""

    __slots__ = ("_worker", "_id", "_type", "_generation", "__weakref__")

    def __init__(self, worker: "Worker", id: int, type_name: str, generation: int):
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_id", id)
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_generation", generation)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):  # introspection by libraries stays here
            raise AttributeError(name)
        return self._worker.request("getattr", obj=self, name=name)

    def __call__(self, *args, **kwargs):
        return self._worker.request("call", obj=self, args=list(args), kwargs=kwargs)

    def __repr__(self) -> str:
        return f"<{self._type} in the worker>"

    def __del__(self):
        try:
            self._worker.release(self)
        except Exception:  # noqa: BLE001 - at interpreter exit
            pass


def type_name(value) -> str:
    """The type of a value as the module made it: a Remote's type in the worker, else the local type."""
    return value._type if isinstance(value, Remote) else type(value).__name__


def prepare_scratch(module_path: Path) -> Path:
    """
    A new scratch folder of a worker: runtime/ (a copy of the engine's files
    the worker runs) and submission/ (a copy of the module), readable by the
    sandbox's user; the worker's log goes there too.
    """
    scratch = Path(tempfile.mkdtemp(prefix="worker-"))
    runtime = scratch / "runtime"
    (runtime / "helper" / "grading").mkdir(parents=True)
    (runtime / "helper" / "__init__.py").write_text("")
    for name in WORKER_FILES:
        shutil.copyfile(ENGINE / name, runtime / "helper" / "grading" / name)
    (scratch / "submission").mkdir()
    shutil.copyfile(module_path, scratch / "submission" / MODULE_NAME)
    for path in [scratch, *scratch.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return scratch


def environment(python_path: Path, threads: int) -> dict:
    """The worker's whole environment (nothing of the judge's own)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "PYTHONPATH": str(python_path), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "MPLBACKEND": "Agg",
        "TORCH_HOME": "/tmp/torch",
    }


class Worker:
    """The worker process of one module (see the module docstring)."""

    def __init__(self, module_path: Path, bwrap: Optional[str] = None, timeout: float = 60.0,
                 limits: Limits = Limits(), uid: Optional[int] = None, threads: Optional[int] = None,
                 readable: Sequence[Path] = (), max_starts: int = 25, code_root: Optional[Path] = None):
        """
        Inputs:
        - module_path: the module under test (copied; the copy is what runs)
        - bwrap: bwrap's path, to run the worker in the sandbox; None runs it as a plain process
        - timeout: seconds one request may take (the import too) before the worker is stopped
        - limits: the worker's limits (its wall clock is the whole worker's life)
        - uid: the sandbox's user (when run as root)
        - threads: OMP/MKL threads of the worker (default: this process's)
        - readable: more folders the worker may read (a weight cache the judge lays out)
        - max_starts: starts at most; then every request fails
        - code_root: run the worker with this folder's helper/ (all of it: the probes may then import more
          of it, as the students' self-check does) instead of a copy of the engine alone; no sandbox then
        """
        self.module_path, self.bwrap, self.timeout = Path(module_path), bwrap, timeout
        self.limits, self.uid, self.readable, self.max_starts = limits, uid, list(readable), max_starts
        if code_root is not None and bwrap is not None:
            raise ValueError("a worker with the whole helper/ (code_root) runs without the sandbox")
        self.code_root = code_root
        self.threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
        self.scratch = prepare_scratch(self.module_path)
        self.log = self.scratch / "worker.log"
        self.process: Optional[subprocess.Popen] = None
        self.generation, self.starts, self._requests, self._released = 0, 0, 0, []
        self._module: Optional[Remote] = None
        self._import_error: Optional[RemoteError] = None

    def _start(self) -> None:
        if self.starts >= self.max_starts:
            raise WorkerLost(f"not run: the worker was started {self.starts} times, the most allowed")
        self.starts += 1
        self.generation += 1
        submission = self.scratch / "submission"
        prefix = []
        if self.bwrap:
            prefix = bwrap_command(self.bwrap, readable=[self.scratch / "runtime", submission, *self.readable],
                                   cwd=submission, limits=self.limits, uid=self.uid)
        # The worker's output is kept only as a tail: a file in the scratch folder, limited like any file.
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "helper.grading.worker"], cwd=submission,
                env=environment(self.code_root or self.scratch / "runtime", self.threads),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, preexec_fn=preexec(self.limits),
                start_new_session=True,
            )
        self._module = None
        self._released = []

    def _stop(self) -> str:
        """Stop the worker; why it ended, in words."""
        process, self.process = self.process, None
        if process is None:
            return ""
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if process.poll() is None:
            try:
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        kill_group(process)
        code = process.returncode
        return describe_exit(code) or (f"exit status {code}" if code not in (None, 0) else "")

    def close(self) -> None:
        """Stop the worker and remove its scratch folder."""
        self._stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def module(self) -> Remote:
        """The module in the worker (imported first, in a new worker when needed); a failed import fails all."""
        if self._import_error is not None:
            raise self._import_error
        if self.process is None or self._module is None:
            if self.process is None:
                self._start()
            try:
                self._module = self._request_now({"op": "import", "path": str(self.scratch / "submission" /
                                                                              MODULE_NAME)}, self.timeout)
            except (RemoteError, WorkerLost) as error:
                self._import_error = error
                raise
        return self._module

    def probe(self, name: str, *args, **kwargs):
        """helper.grading.probes.NAME(*args, **kwargs), run in the worker."""
        self.module()
        return self.request("probe", name=name, args=list(args), kwargs=kwargs)

    def call_printing(self, function: Remote, *args, **kwargs):
        """(function(*args, **kwargs), what it printed)."""
        return self.request("call", obj=function, args=list(args), kwargs=kwargs, capture=True, printed=True)

    def release(self, remote: Remote) -> None:
        if remote._generation == self.generation and self.process is not None:
            self._released.append(remote._id)  # the worker forgets it with the next request

    def request(self, op: str, timeout: Optional[float] = None, printed: bool = False, **fields):
        """Send one request; its result (see the module docstring for the errors)."""
        if self.process is None:
            self.module()
        message = {"op": op}
        blobs = []
        for key, value in fields.items():
            message[key] = protocol.encode(value, blobs, self._refuse) if key in ("args", "kwargs", "obj") else value
        message["obj"] = message["obj"]["handle"] if "obj" in message else None
        return self._request_now(message, timeout or self.timeout, blobs, printed)

    def _refuse(self, value):
        if isinstance(value, Remote):
            if value._worker is not self or value._generation != self.generation:
                raise StaleRemote("not run: an object of a worker that was stopped after an earlier check")
            return protocol.Handle(value._id, value._type)
        raise TypeError(f"cannot send a {type(value).__name__} to the worker")

    def _request_now(self, message: dict, timeout: float, blobs=(), printed: bool = False):
        message["release"], self._released = self._released, []
        self._requests += 1
        message["id"] = self._requests
        start = time.monotonic()
        try:
            protocol.write_frame(self.process.stdin.fileno(), message, list(blobs))
            reply, binary = protocol.read_frame(self.process.stdout.fileno(), deadline=start + timeout)
            value = result_of(reply, binary, message, self._remote)
        except TimeoutError:
            self._stop()
            raise WorkerLost(f"stopped after {timeout:g} s: the call did not return in time") from None
        except (EOFError, BrokenPipeError, OSError):
            why = self._stop()
            raise WorkerLost("the worker process ended during the call" + (f": {why}" if why else "")) from None
        except protocol.ProtocolError as error:
            self._stop()
            raise WorkerLost(f"the worker sent a malformed reply ({error})") from None
        if printed:
            return value, str(reply.get("printed", ""))
        return value

    def _remote(self, id: int, kind: str) -> Remote:
        return Remote(self, id, kind, self.generation)


def result_of(reply, binary, request: dict, remote_of):
    """
    The value a reply carries (decoded; remote_of(id, type) makes its
    Remotes), or the module's error raised here: RemoteError, or
    AttributeError for a missing attribute. ProtocolError for a reply that
    does not answer request.
    """
    if not isinstance(reply, dict) or reply.get("id") != request["id"]:
        raise protocol.ProtocolError("a reply that does not answer the request")
    if "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {}
        if request["op"] == "getattr" and error.get("type") == "AttributeError":
            raise AttributeError(str(error.get("message", ""))[:1000])
        raise RemoteError(str(error.get("type", "Error"))[:100], str(error.get("message", ""))[:4000],
                          str(error.get("where", ""))[:200], bool(error.get("not_implemented")))
    return protocol.decode(reply.get("ok"), binary, remote_of)
