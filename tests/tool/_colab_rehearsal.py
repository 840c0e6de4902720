"""
The stage of the Colab rehearsal (tests/tool/dev/test_colab_rehearsal.py): what
only Google and the internet provide, made locally.

- `make_coco`: a small coco.pt in the exact format of the assignment's file
  (keys, dtypes, shapes, no image ids, a vocabulary starting <NULL>,
  <START>, <END>, <UNK>); written independently of helper.data, so that a
  loader that drifts from the real format fails here.
- `CocoServer` (from _range_server): serves those bytes over HTTP from
  127.0.0.1 only, with Range requests, and cuts its first response part
  way, so that the notebook's download must resume.
- `write_standins`: a `google.colab` package whose `drive.mount` logs the
  call, and a `pip` package that shadows the real one for `python -m pip`:
  without a network, `install` succeeds only for packages already installed
  (what pip reports as "Requirement already satisfied") and logs the call.
- `write_imagenet_standin`: a RegNetX-400MF state dict under torchvision's
  file name in $TORCH_HOME/hub/checkpoints.
- `run_notebook`: runs a notebook's cells unchanged in a fresh kernel with
  the stage's environment, plus one probe cell at the end that reports what
  the kernel ended up with.
"""
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List

import torch

SPECIALS = ["<NULL>", "<START>", "<END>", "<UNK>"]
COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
THINGS = ["dog", "cat", "man", "woman", "bus", "train", "plate", "horse"]
VERBS = ["sitting", "standing", "walking", "parked", "lying"]
PLACES = ["street", "table", "field", "beach", "road", "room"]
WORDS = ["a", "the", "on", "in", "of", *COLOURS, *THINGS, *VERBS, *PLACES]
CAPTION_LENGTH = 17  # <START>, at most 15 words, <END>, <NULL> padding


def _caption(generator: torch.Generator, token_to_idx: Dict[str, int]) -> List[int]:
    """One caption 'a COLOUR THING VERB on the PLACE' (a rare <UNK> for a word), as word indices with <START>/<END>."""
    pick = lambda words: words[int(torch.randint(len(words), (1,), generator=generator))]
    words = ["a", pick(COLOURS), pick(THINGS), pick(VERBS), pick(["on", "in"]), "the", pick(PLACES)]
    if float(torch.rand(1, generator=generator)) < 0.1:
        words[2] = "<UNK>"  # COCO's rare words
    return [token_to_idx["<START>"], *(token_to_idx[w] for w in words), token_to_idx["<END>"]]


def make_coco(num_train: int = 64, num_val: int = 16, seed: int = 0, captions_dtype=torch.int64) -> dict:
    """
    A small coco.pt of the assignment's format.

    Inputs:
    - num_train, num_val: images per split, one caption each, all images distinct
    - seed: of the content
    - captions_dtype: int64 as in the real file (a negative check passes another)

    Returns:
    - {"train_images": uint8 (num_train, 3, 112, 112), "train_captions": (num_train, 17),
       "val_images", "val_captions", "vocab": {"idx_to_token": list, "token_to_idx": dict}}
    """
    generator = torch.Generator().manual_seed(seed)
    idx_to_token = SPECIALS + WORDS
    token_to_idx = {token: i for i, token in enumerate(idx_to_token)}
    data = {}
    for split, n in (("train", num_train), ("val", num_val)):
        # Coarse 4x4 grids of random colours, blown up to 112x112: distinct, and far apart for the encoder.
        grids = torch.randint(0, 256, (n, 3, 4, 4), generator=generator, dtype=torch.uint8)
        data[f"{split}_images"] = grids.repeat_interleave(28, dim=2).repeat_interleave(28, dim=3).contiguous()
        captions = torch.zeros(n, CAPTION_LENGTH, dtype=torch.int64)  # <NULL> = 0
        for row in range(n):
            tokens = _caption(generator, token_to_idx)
            captions[row, : len(tokens)] = torch.tensor(tokens)
        data[f"{split}_captions"] = captions.to(captions_dtype)
    data["vocab"] = {"idx_to_token": idx_to_token, "token_to_idx": token_to_idx}
    return data


def coco_bytes(data: dict, folder: Path) -> bytes:
    """The bytes of torch.save(data), as a server sends them."""
    path = folder / "served_coco.pt"
    torch.save(data, path)
    return path.read_bytes()


def coco_expectation(data: dict, size: int) -> dict:
    """The notebook's CAPTIONING_COCO_EXPECTED for this file: counts, vocabulary size and a byte range around size."""
    return {
        "num_train": len(data["train_images"]), "num_val": len(data["val_images"]),
        "vocab_size": len(data["vocab"]["idx_to_token"]), "min_bytes": size // 2, "max_bytes": size * 2,
    }


# ---------------------------------------------------------------------------
# Stand-ins for Colab, pip and the ImageNet weights

_DRIVE = '''"""Stand-in for google.colab.drive (offline rehearsal): mount logs the call instead of mounting Google Drive."""
import json
import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    with open(os.environ["CAPTIONING_REHEARSAL_LOG"], "a") as log:
        log.write(json.dumps({"call": "drive.mount", "mountpoint": mountpoint}) + "\\n")
    print("Mounted at", mountpoint)
'''

_PIP = '''"""
Stand-in for `python -m pip` (offline rehearsal): there is no network, so
`install` succeeds only for packages that are already installed, as pip's
"Requirement already satisfied"; anything else fails. Every call is logged.
"""
import importlib.metadata
import json
import os
import sys

args = sys.argv[1:]
with open(os.environ["CAPTIONING_REHEARSAL_LOG"], "a") as log:
    log.write(json.dumps({"call": "pip", "args": args}) + "\\n")
if not args or args[0] != "install":
    sys.exit(f"stand-in pip: only 'install' is rehearsed; got {args}")
missing = []
for name in (a for a in args[1:] if not a.startswith("-")):
    try:
        print(f"Requirement already satisfied: {name} ({importlib.metadata.version(name)})")
    except importlib.metadata.PackageNotFoundError:
        missing.append(name)
if missing:
    sys.exit(f"stand-in pip: no network here; {missing} not installed")
'''


def write_standins(folder: Path) -> Path:
    """
    Write the google.colab and pip stand-ins into folder (for PYTHONPATH).
    Both log to $CAPTIONING_REHEARSAL_LOG, one JSON object a line.

    Returns:
    - folder
    """
    colab = folder / "google" / "colab"  # google/ stays a namespace package, as google.* packages are
    colab.mkdir(parents=True)
    (colab / "__init__.py").write_text('"""Stand-in for google.colab (offline rehearsal)."""\n')
    (colab / "drive.py").write_text(_DRIVE)
    (folder / "pip").mkdir()
    (folder / "pip" / "__init__.py").write_text('"""Stand-in for pip (offline rehearsal); see __main__."""\n')
    (folder / "pip" / "__main__.py").write_text(_PIP)
    return folder


def read_log(path: Path) -> List[dict]:
    """The calls the stand-ins logged."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_imagenet_standin(torch_home: Path, seed: int = 1234) -> Path:
    """
    A state dict of RegNetX-400MF (torchvision's initialisation, seeded:
    the right keys and shapes, not ImageNet's values) where torchvision's
    IMAGENET1K_V2 weights are cached: $TORCH_HOME/hub/checkpoints/<name of the URL>;
    linked under IMAGENET1K_V1's name too, which the deprecated
    `pretrained=True` of a student's encoder loads.

    Returns:
    - the file of IMAGENET1K_V2
    """
    from torchvision import models

    weights = models.RegNet_X_400MF_Weights
    path = torch_home / "hub" / "checkpoints" / os.path.basename(weights.IMAGENET1K_V2.url)
    path.parent.mkdir(parents=True)
    torch.manual_seed(seed)
    torch.save(models.regnet_x_400mf().state_dict(), path)
    os.link(path, path.parent / os.path.basename(weights.IMAGENET1K_V1.url))
    return path


def copy_repo_to_drive(repo: Path, drive_folder: Path) -> Path:
    """
    The student's copy of the assignment folder in their Drive: the repo's
    files without what a fresh clone lacks (virtual environment, data, runs)
    and without the tests.
    """
    # .venv*: .venv, and make compat's .venv-compat (gigabytes)
    ignore = shutil.ignore_patterns(".git", ".venv*", "datasets", "runs", "tests", "__pycache__", ".pytest_cache", "*.pyc")
    shutil.copytree(repo, drive_folder, ignore=ignore)
    return drive_folder


# ---------------------------------------------------------------------------
# Running the notebook

PROBE = '''# The rehearsal's probe (not part of the notebook): what the kernel ended up with.
import json as _json
import helper as _helper
import rnn_lstm_captioning as _module

_weights = torch.load(os.path.join(torch.hub.get_dir(), "checkpoints", "regnet_x_400mf-62229a5f.pth"))["stem.0.weight"]
_probe = {
    "in_colab": IN_COLAB, "drive_path": GOOGLE_DRIVE_PATH, "cwd": os.getcwd(),
    "helper": _helper.__file__, "module": _module.__file__, "dataset": DATASET, "pretrained": PRETRAINED,
    "train_images": list(data["train_images"].shape), "vocab": idx_to_word[:4],
    "encoder_has_file_weights": any(
        v.shape == _weights.shape and torch.equal(v.cpu(), _weights) for v in encoder.state_dict().values()
    ),
    "trained": sorted(trained),
}
print("PROBE " + _json.dumps(_probe))
'''


def run_notebook(notebook: Path, cwd: Path, env: Dict[str, str], timeout: int = 600):
    """
    Execute a notebook's cells, unchanged, in a fresh kernel of this Python,
    then the probe cell; the file is not modified.

    Inputs:
    - notebook: the .ipynb
    - cwd: the kernel's working folder at start (Colab's /content)
    - env: the kernel's whole environment
    - timeout: seconds a cell may take

    Returns:
    - the executed notebook (nbformat node), the probe's dict

    Raises nbclient's CellExecutionError when a cell fails.
    """
    import nbformat
    from nbclient import NotebookClient

    executed = nbformat.read(notebook, as_version=4)
    executed.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(executed, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)
    lines = [line for line in cell_text(executed.cells[-1]).splitlines() if line.startswith("PROBE ")]
    return executed, json.loads(lines[0][len("PROBE "):])


def cell_text(cell, streams=("stdout", "stderr")) -> str:
    """What a code cell printed on the given streams, and its plain-text results."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            if output["name"] in streams:
                parts.append(output["text"])
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)
