"""Files written safely: under a temporary name, renamed into place when complete."""
import contextlib
import json
import math
import os
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """
    Write a file under a temporary name and rename it into place only when
    the with-block ends without error, so that readers never see half a file
    and a good old file is kept when writing fails.

        with atomic_output("out.h5") as tmp:
            write_everything_to(tmp)

    Inputs:
    - path: the final file name

    Yields:
    - the temporary path to write to (same folder, so the rename is atomic)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_safe(value):
    """NaN and infinities as None (JSON has no such numbers), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, value: dict) -> None:
    """Write JSON atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(value), indent=2) + "\n")
