"""
A submission's files, taken out of what a student handed in (a folder, a
.py file or the zip of `python -m helper.submit`) before any of its code
runs: the module and the notebook copied into the grader's scratch folder
under fixed names, and the trained model read into memory (tensors and
plain data only, never code).

Limits against a hand-in made to fill the disk or the memory: each member
at most MAX_MEMBER_BYTES, all of them together at most MAX_TOTAL_BYTES
(counted as they are copied, whatever a zip's directory claims), at most
MAX_MEMBERS names in a zip.
"""
import shutil
import zipfile
from pathlib import Path
from typing import List, Optional

from helper.captioning.checkpoint import load_checkpoint

MODULE, NOTEBOOK = "rnn_lstm_captioning.py", "rnn_lstm_captioning.ipynb"
WEIGHTS = "runs/notebook/attn/best.pt"
MAX_MEMBER_BYTES = 500 << 20
MAX_TOTAL_BYTES = 600 << 20
MAX_MEMBERS = 10_000
WANTED = {"module": MODULE, "notebook": NOTEBOOK, "weights": WEIGHTS}


def submission_name(source: Path) -> str:
    """alice.zip, alice/, alice/rnn_lstm_captioning.py -> alice; safe for file names."""
    source = source.resolve()
    stem = source.parent.name if source.name == MODULE else source.stem if source.is_file() else source.name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem) or "submission"


def _pick(names: List[str], wanted: str) -> Optional[str]:
    """The member called wanted: exactly, else the shortest path ending in its name."""
    if wanted in names:
        return wanted
    base = wanted.rsplit("/", 1)[-1]
    ends = sorted((n for n in names if n.rsplit("/", 1)[-1] == base), key=len)
    return ends[0] if ends else None


def _copy_limited(source, target: Path, budget: list) -> None:
    """Copy a file object, at most MAX_MEMBER_BYTES and what is left of budget[0]; ValueError past either."""
    limit = min(MAX_MEMBER_BYTES, budget[0])
    written = 0
    with open(target, "wb") as out:
        while True:
            chunk = source.read(1 << 20)
            if not chunk:
                break
            written += len(chunk)
            if written > limit:
                raise ValueError(f"larger than {limit >> 20} MB")
            out.write(chunk)
    budget[0] -= written


def check_archive(path: Path) -> None:
    """
    ValueError unless a checkpoint holds no more than MAX_MEMBER_BYTES once
    loaded: torch.save writes its zip members stored, so a compressed member
    (a few megabytes that inflate to gigabytes in the grader's memory) is refused.
    """
    if not zipfile.is_zipfile(path):
        return  # the legacy format: read as it lies on disk, no bigger than the file
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    if any(m.compress_type != zipfile.ZIP_STORED for m in members):
        raise ValueError("it holds compressed members (torch.save stores them as they are)")
    if sum(m.file_size for m in members) > MAX_MEMBER_BYTES:
        raise ValueError(f"it unpacks to more than {MAX_MEMBER_BYTES >> 20} MB")


def unpack(source: Path, into: Path) -> dict:
    """
    The hand-in's files in folder into (see the module docstring).

    Returns:
    - {"module": Path or None, "notebook": Path or None, "checkpoint": the
      trained model (a dict) or None, "problems": [str]}
    """
    into.mkdir(parents=True, exist_ok=True)
    found = {"module": None, "notebook": None, "checkpoint": None, "problems": []}
    targets = {"module": into / MODULE, "notebook": into / NOTEBOOK, "weights": into / "weights.pt"}
    budget = [MAX_TOTAL_BYTES]
    copied = {}
    if source.is_file() and source.suffix == ".py":
        members = {"module": source}
        opener = lambda member: open(member, "rb")  # noqa: E731
    elif source.is_dir():
        names = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() and not p.is_symlink()]
        members = {key: source / name for key, name in ((k, _pick(names, w)) for k, w in WANTED.items()) if name}
        opener = lambda member: open(member, "rb")  # noqa: E731
    elif zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_MEMBERS:
            found["problems"].append(f"the zip holds {len(infos)} files (at most {MAX_MEMBERS})")
            return found
        names = [i.filename for i in infos]
        members = {key: name for key, name in ((k, _pick(names, w)) for k, w in WANTED.items()) if name}
        opener = archive.open
    else:
        found["problems"].append(f"{source.name} is not a folder, a .py file or a zip")
        return found
    for key, member in members.items():
        try:
            with opener(member) as data:
                _copy_limited(data, targets[key], budget)
            copied[key] = targets[key]
        except (ValueError, zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
            found["problems"].append(f"{Path(str(member)).name} cannot be taken from the hand-in ({error})")
    found["module"], found["notebook"] = copied.get("module"), copied.get("notebook")
    if "weights" in copied:
        try:
            check_archive(copied["weights"])
            found["checkpoint"] = load_checkpoint(copied["weights"])  # weights_only: no code runs
        except Exception as error:  # noqa: BLE001 - any damage is a reason, not a crash of the batch
            found["problems"].append(f"{WEIGHTS} is not a checkpoint ({type(error).__name__}: {str(error)[:200]})")
        copied["weights"].unlink()
    return found
