"""
The worker: the only process that imports the module under test.

    python -m helper.grading.worker

It reads requests from stdin and writes replies to what was stdout when it
started (helper.grading.protocol frames); the module's own printing goes to
stderr. Requests (each {"op": ..., "release": [ids]}):

    {"op": "import", "path": FILE}                  -> the module (a handle)
    {"op": "getattr", "obj": ID, "name": NAME}      -> the attribute
    {"op": "call", "obj": ID, "args", "kwargs", "capture": bool}
    {"op": "probe", "name": NAME, "args", "kwargs"} -> helper.grading.probes.NAME(...)

A reply is {"ok": value} or {"error": {"type", "message", "where",
"not_implemented"}}, with "printed" (what the call printed) when asked to
capture. Tensors travel by value; other objects stay here, as handles.
"""
import contextlib
import io
import os
import sys
import traceback
from pathlib import Path

from helper.grading import probes, protocol

MODULE_NAME = "rnn_lstm_captioning"


class Objects:
    """The objects the judge holds handles to."""

    def __init__(self):
        self.table, self.next_id = {}, 1

    def handle_of(self, obj) -> protocol.Handle:
        handle = protocol.Handle(self.next_id, type(obj).__name__)
        self.table[self.next_id] = obj
        self.next_id += 1
        return handle

    def get(self, id, kind="object"):
        if id not in self.table:
            raise LookupError(f"no object {id} in the worker")
        return self.table[id]


def _where(error: BaseException) -> str:
    """'f (line N)' of the innermost frame in the module under test, or ''."""
    module = sys.modules.get(MODULE_NAME)
    path = getattr(module, "__file__", None)
    frames = [f for f in traceback.extract_tb(error.__traceback__) if path and f.filename == path]
    return f"{frames[-1].name} (line {frames[-1].lineno})" if frames else ""


def _import(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def answer(request: dict, objects: Objects, binary) -> dict:
    """Carry out one request; the reply (not yet encoded)."""
    decode = lambda value: protocol.decode(value, binary, objects.get)  # noqa: E731
    op = request.get("op")
    if op == "import":
        return {"ok": _import(str(request["path"]))}
    if op == "getattr":
        return {"ok": getattr(objects.get(request["obj"]), str(request["name"]))}
    if op in ("call", "probe"):
        target = objects.get(request["obj"]) if op == "call" else getattr(probes, str(request["name"]))
        args, kwargs = decode(request.get("args", {"list": []})), decode(request.get("kwargs", {"dict": {}}))
        if not request.get("capture"):
            return {"ok": target(*args, **kwargs)}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = target(*args, **kwargs)
        return {"ok": result, "printed": printed.getvalue()[:100_000]}
    raise ValueError(f"unknown request {op!r}")


def serve(requests: int, replies: int) -> None:
    """Answer requests until stdin closes."""
    objects = Objects()
    while True:
        try:
            request, binary = protocol.read_frame(requests)
        except EOFError:
            return
        for id in request.get("release", []):
            objects.table.pop(id, None)
        try:
            reply = answer(request, objects, binary)
        except BaseException as error:  # noqa: BLE001 - whatever the module raises is the answer
            if isinstance(error, KeyboardInterrupt):
                raise
            reply = {"error": {"type": type(error).__name__, "message": str(error)[:4000], "where": _where(error),
                               "not_implemented": isinstance(error, NotImplementedError)}}
        blobs = []
        try:
            message = {key: protocol.encode(value, blobs, objects.handle_of) if key == "ok" else value
                       for key, value in reply.items()}
        except Exception as error:  # noqa: BLE001 - a result that cannot be sent is an error of the call
            blobs = []
            message = {"error": {"type": type(error).__name__, "message": f"its result cannot be sent: {error}",
                                 "where": "", "not_implemented": False}}
        message["id"] = request.get("id")  # the judge checks that a reply answers its request
        protocol.write_frame(replies, message, blobs)


def main() -> None:
    replies = os.dup(1)
    os.dup2(2, 1)  # the module's printing must not mix with the replies
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    sys.path.insert(0, str(Path.cwd()))
    serve(0, replies)


if __name__ == "__main__":
    main()
