"""
The grading engine (helper.grading): plain data over the pipe, never code;
a worker that imports the module under test and answers the judge; a call
that crashes or hangs its worker stops it and fails that call alone.
"""
import json
import os
import struct
import textwrap

import pytest
import torch

from helper.grading import protocol
from helper.grading.remote import RemoteError, StaleRemote, Worker, WorkerLost


def refuse(value):
    raise TypeError(type(value).__name__)


def round_trip(value):
    blobs = []
    data = protocol.encode(value, blobs, refuse)
    return protocol.decode(json.loads(json.dumps(data)), memoryview(b"".join(blobs)), lambda i, t: (i, t))


def test_tensors_and_plain_data_travel_by_value():
    value = {"x": torch.arange(6.0).reshape(2, 3), "pair": (1, 2.5, "a", None, True), "list": [torch.tensor(3)],
             "dtype": torch.float64, "bf16": torch.ones(2, dtype=torch.bfloat16), "inf": float("inf")}
    back = round_trip(value)
    assert torch.equal(back["x"], value["x"]) and back["x"].dtype == torch.float32
    assert back["pair"] == (1, 2.5, "a", None, True) and isinstance(back["pair"], tuple)
    assert back["dtype"] is torch.float64 and back["bf16"].dtype == torch.bfloat16 and back["inf"] == float("inf")


@pytest.mark.parametrize("data, blob", [
    ({"tensor": {"dtype": "object", "shape": [1], "offset": 0, "size": 8}}, b"x" * 8),
    ({"tensor": {"dtype": "float32", "shape": [4], "offset": 0, "size": 8}}, b"x" * 8),  # size does not match
    ({"tensor": {"dtype": "float32", "shape": [2], "offset": 4, "size": 8}}, b"x" * 8),  # outside the frame
    ({"pickle": "gASVAAAAAAAAAAAu"}, b""),
    ({"list": [{"list": []}] * 3, "extra": 1}, b""),
])
def test_a_malformed_value_is_refused(data, blob):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(data, memoryview(blob), lambda i, t: i)


def test_a_frame_larger_than_the_limit_is_refused_before_it_is_read():
    read, write = os.pipe()
    os.write(write, struct.pack(">QQ", protocol.MAX_FRAME, 1))
    with pytest.raises(protocol.ProtocolError, match="at most"):
        protocol.read_frame(read)
    os.close(read), os.close(write)


MODULE = textwrap.dedent("""
    import os, time, torch
    def double(x):
        return 2 * x
    def crash():
        os._exit(3)
    def hang():
        time.sleep(60)
    def fail():
        raise NotImplementedError
    def shout():
        print("hello")
        return 1
    class Box(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))
""")


@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "rnn_lstm_captioning.py"
    path.write_text(MODULE)
    worker = Worker(path, timeout=10)
    yield worker
    worker.close()


def test_calls_run_in_the_worker_and_errors_come_back_as_data(worker):
    module = worker.module()
    assert torch.equal(module.double(torch.ones(3)), torch.full((3,), 2.0))
    box = module.Box()
    assert repr(box) == "<Box in the worker>"
    assert worker.probe("parameters", box)["w"].tolist() == [1.0, 1.0]
    with pytest.raises(RemoteError) as raised:
        module.fail()
    assert raised.value.not_implemented and raised.value.where == "fail (line 10)"
    assert worker.call_printing(module.shout) == (1, "hello\n")
    with pytest.raises(AttributeError):
        module.missing


@pytest.mark.slow  # waits out a hanging call's time limit, then starts a new worker
def test_a_call_that_crashes_or_hangs_stops_the_worker_and_the_next_call_gets_a_new_one(worker):
    module = worker.module()
    box = module.Box()
    with pytest.raises(WorkerLost, match="exit status 3"):
        module.crash()
    revived = worker.module()
    assert torch.equal(revived.double(torch.ones(1)), torch.full((1,), 2.0))  # a new worker, started in time
    worker.timeout = 2  # once started, a hang needs no more to show
    with pytest.raises(WorkerLost, match="stopped after 2 s"):
        revived.hang()
    worker.timeout = 10
    assert torch.equal(worker.module().double(torch.ones(1)), torch.full((1,), 2.0))
    with pytest.raises(StaleRemote):
        worker.probe("parameters", box)  # an object of a worker that was stopped
    assert worker.starts == 3  # the first, after the crash, after the hang
