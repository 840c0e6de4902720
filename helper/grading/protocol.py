"""
Plain data between the judge and the worker, over a pipe.

A message is one frame:

    8 bytes   length of the JSON header (big-endian)
    8 bytes   length of the binary part
    header    JSON: the message, with each tensor as {"tensor": {dtype, shape, offset, size, ...}}
    binary    the tensors' bytes, one after the other

Nothing is ever unpickled: a frame holds JSON values (None, bool, int,
float, str), tuples, lists, dicts with string keys, tensors of the dtypes in
DTYPES, torch dtypes and devices, and handles (numbers naming an object that
stays in the worker). A frame that breaks any of these rules, or is larger
than MAX_FRAME, raises ProtocolError: the judge reads what the worker sends
as untrusted data.
"""
import json
import math
import os
import select
import struct
import time
from typing import Callable, List, Optional

import torch

MAX_FRAME = 256 << 20
MAX_DEPTH = 40
MAX_ITEMS = 200_000
DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "bfloat16", "float32", "float64", "complex64", "complex128",
                 "uint8", "int8", "int16", "int32", "int64", "bool")
}
_HEADER = struct.Struct(">QQ")


class ProtocolError(Exception):
    """A frame that is not a well-formed message (or the pipe closed in the middle of one)."""


class Handle:
    """An object that stays in the worker, named by its number there."""

    __slots__ = ("id", "type")

    def __init__(self, id: int, type: str = "object"):
        self.id, self.type = id, type


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements as bytes, in row-major order, on the CPU."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def encode(value, blobs: List[bytes], handle_of: Callable, depth: int = 0):
    """
    value as JSON data, its tensors' bytes appended to blobs.

    Inputs:
    - handle_of: handle_of(obj) -> Handle, for any other object (the worker
      keeps it); the judge passes a function that raises TypeError
    """
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deeply")
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if type(value) in (tuple, list):
        return {type(value).__name__: [encode(v, blobs, handle_of, depth + 1) for v in value]}
    if type(value) is dict and all(type(k) is str for k in value):
        return {"dict": {k: encode(v, blobs, handle_of, depth + 1) for k, v in value.items()}}
    if type(value) in (torch.Tensor, torch.nn.Parameter) and str(value.dtype).split(".")[-1] in DTYPES:
        data = tensor_bytes(value)
        offset = sum(len(b) for b in blobs)
        blobs.append(data)
        return {"tensor": {"dtype": str(value.dtype).split(".")[-1], "shape": list(value.shape), "offset": offset,
                           "size": len(data), "device": value.device.type, "requires_grad": value.requires_grad}}
    if type(value) is torch.dtype and str(value).split(".")[-1] in DTYPES:
        return {"dtype": str(value).split(".")[-1]}
    if type(value) is torch.device:
        return {"device": str(value)}
    if type(value) is Handle:
        return {"handle": value.id}
    handle = handle_of(value)
    return {"handle": handle.id, "type": handle.type}


def _tensor(spec: dict, binary: memoryview) -> torch.Tensor:
    if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES:
        raise ProtocolError(f"a tensor of unknown dtype {spec.get('dtype') if isinstance(spec, dict) else spec!r}")
    dtype, shape = DTYPES[spec["dtype"]], spec.get("shape")
    if not isinstance(shape, list) or not all(type(s) is int and 0 <= s for s in shape) or len(shape) > 16:
        raise ProtocolError("a tensor with a bad shape")
    offset, size = spec.get("offset"), spec.get("size")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if type(offset) is not int or type(size) is not int or offset < 0 or offset + size > len(binary):
        raise ProtocolError("a tensor outside the frame")
    if size != math.prod(shape) * itemsize:
        raise ProtocolError("a tensor whose size does not match its shape")
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    data = torch.frombuffer(bytearray(binary[offset : offset + size]), dtype=torch.uint8)
    return data.view(dtype).reshape(shape)


def decode(data, binary: memoryview, handle_from: Callable, depth: int = 0, count: Optional[list] = None):
    """
    The value that encode made. handle_from(id, type) gives the object of a
    handle. ProtocolError for anything that encode does not make.
    """
    count = count if count is not None else [0]
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise ProtocolError("value nested too deeply or too large")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise ProtocolError(f"unexpected value of type {type(data).__name__}")
    (tag, inner), *rest = data.items()
    if rest and tag != "handle":
        raise ProtocolError("unexpected value")
    if tag in ("tuple", "list") and isinstance(inner, list):
        items = [decode(v, binary, handle_from, depth + 1, count) for v in inner]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict" and isinstance(inner, dict):
        return {str(k): decode(v, binary, handle_from, depth + 1, count) for k, v in inner.items()}
    if tag == "float" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    if tag == "tensor":
        return _tensor(inner, binary)
    if tag == "dtype" and inner in DTYPES:
        return DTYPES[inner]
    if tag == "device" and isinstance(inner, str) and len(inner) < 32:
        return torch.device(inner)
    if tag == "handle" and type(inner) is int:
        kind = data.get("type", "object")
        return handle_from(inner, str(kind)[:200])
    raise ProtocolError(f"unexpected value tagged {str(tag)[:40]!r}")


def write_frame(fd: int, message, blobs: List[bytes]) -> None:
    """Send one message (already encoded) and its blobs."""
    header = json.dumps(message).encode()
    binary = b"".join(blobs)
    data = _HEADER.pack(len(header), len(binary)) + header + binary
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, size: int, deadline: Optional[float]) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, deadline: Optional[float] = None):
    """
    One frame: (message JSON, binary part). EOFError when the pipe closed,
    TimeoutError past the deadline (time.monotonic()), ProtocolError for a
    frame that is too large or not JSON.
    """
    header_size, binary_size = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    if header_size + binary_size > MAX_FRAME:
        raise ProtocolError(f"a message of {header_size + binary_size} bytes (at most {MAX_FRAME})")
    try:
        message = json.loads(_read_exactly(fd, header_size, deadline))
    except (ValueError, RecursionError) as error:
        raise ProtocolError(f"a message that is not JSON ({type(error).__name__})") from None
    return message, memoryview(_read_exactly(fd, binary_size, deadline))
