"""
COCO Captions: the assignment's coco.pt, and a builder from the raw release.

- `download_coco` fetches the assignment's coco.pt (10,000 training and 500
  validation images, one caption each) into a ".part" file, resuming an
  interrupted download, and renames it into place only once it is verified.
- `build_coco_h5` turns the raw COCO 2014 release (captions JSON + image
  folders) into an HDF5 file of the common format (helper/data/storage.py), written
  image batch by image batch, so that sets larger than memory work.

Command line:

    python -m helper.coco download [--path datasets/coco.pt]
    python -m helper.coco build COCO_ROOT OUT.h5 [--min-count 5] [--max-images N]
"""
import argparse
import json
import os
import socket
import string
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from helper.common.files import PathLike, atomic_output
from helper.data.format import CAPTION_LENGTH, END, MAX_WORDS, NULL, SPLITS, START, UNK, load_image, make_vocab
from helper.data.storage import H5SplitWriter, default_data_dir, load_pt, write_h5_attrs

COCO_URL = "http://web.eecs.umich.edu/~justincj/teaching/eecs498/coco.pt"
DOWNLOAD_TIMEOUT_S = 10.0  # per connect and per read: no network fails in seconds, never hangs


# ---------------------------------------------------------------------------
# The assignment's coco.pt


@dataclass(frozen=True)
class CocoExpectation:
    """What a good coco.pt holds. Tests pass a small one for a small fake file."""

    num_train: int = 10000
    num_val: int = 500
    vocab_size: int = 864
    # 10,500 uint8 images of 3x112x112 are 395.1 MB; with captions and the
    # vocabulary the file is about 396.6 MB.
    min_bytes: int = 390_000_000
    max_bytes: int = 405_000_000


class DownloadError(RuntimeError):
    """A download failed; the message says where to place the file by hand."""


def verify_coco_file(path: PathLike, expected: CocoExpectation = CocoExpectation()) -> dict:
    """
    Check a (downloaded) coco.pt: size, keys, dtypes, shapes, counts and
    vocabulary.

    Inputs:
    - path: the file
    - expected: the sizes it must have

    Returns:
    - data: its contents, in the common format

    Raises ValueError naming the file and the first problem found.
    """
    path = Path(path)
    size = path.stat().st_size
    if not expected.min_bytes <= size <= expected.max_bytes:
        raise ValueError(
            f"{path}: {size:,} bytes; a complete coco.pt has between {expected.min_bytes:,} and {expected.max_bytes:,}"
        )
    data = load_pt(path)  # keys, dtypes, shapes, vocabulary
    counts = {split: len(data[f"{split}_images"]) for split in SPLITS}
    wanted = {"train": expected.num_train, "val": expected.num_val}
    if counts != wanted:
        raise ValueError(f"{path}: expected {wanted} images per split; got {counts}")
    vocab_size = len(data["vocab"]["idx_to_token"])
    if vocab_size != expected.vocab_size:
        raise ValueError(f"{path}: expected a vocabulary of {expected.vocab_size} tokens; got {vocab_size}")
    return data


def _check_host_resolves(url: str, timeout: float) -> None:
    """
    Resolve the URL's host name within timeout seconds. Socket timeouts do not
    cover name lookups, which can hang for minutes on a broken network.
    """
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return
    outcome: Dict[str, BaseException] = {}

    def lookup():
        try:
            socket.getaddrinfo(host, None)
        except OSError as error:
            outcome["error"] = error

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise OSError(f"looking up {host} took more than {timeout:.0f} s")
    if "error" in outcome:
        raise outcome["error"]


def fetch_with_resume(url: str, part: Path, timeout: float = DOWNLOAD_TIMEOUT_S, progress: bool = True) -> None:
    """
    Download url into the file part, continuing from its current end with an
    HTTP Range request when part already holds the first bytes.

    Inputs:
    - url: what to fetch
    - part: the file to write; kept when the download breaks, for resuming
    - timeout: seconds to wait for the connection and for each read
    - progress: show a tqdm progress bar

    Raises OSError (urllib.error.URLError, TimeoutError, ...) or
    http.client.HTTPException when the transfer fails.
    """
    start = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    _check_host_resolves(url, timeout)
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the range starts at the end: nothing is missing
            return
        raise
    with response:
        resumed = start and response.status == 206 and response.headers.get("Content-Range", "").startswith(
            f"bytes {start}-"
        )
        if not resumed:
            start = 0  # the server sent the whole file: start over
        remaining = response.headers.get("Content-Length")
        total = start + int(remaining) if remaining is not None else None
        with open(part, "ab" if start else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, desc=part.name, disable=not progress
        ) as bar:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise HTTPException(f"connection closed after {part.stat().st_size:,} of {total:,} bytes")


def download_coco(
    path: Optional[PathLike] = None,
    url: str = COCO_URL,
    expected: CocoExpectation = CocoExpectation(),
    timeout: float = DOWNLOAD_TIMEOUT_S,
    progress: bool = True,
) -> Path:
    """
    Download the assignment's coco.pt, verify it, and move it into place.

    The bytes go to "<path>.part" first; a later call continues an
    interrupted download from there. Only a verified file is renamed to
    path, so path never holds a partial or wrong file.

    Inputs:
    - path: where the file goes; None for coco.pt in the data folder
    - url: where to fetch it from
    - expected: what a good file holds (see CocoExpectation)
    - timeout: seconds to wait for the connection and for each read
    - progress: show a progress bar

    Returns:
    - path

    Raises DownloadError (naming the file to place by hand) when the network
    fails, ValueError when the downloaded file fails verification (the bad
    ".part" file is deleted).
    """
    path = Path(path) if path is not None else default_data_dir() / "coco.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        fetch_with_resume(url, part, timeout, progress)
    except (OSError, HTTPException) as error:
        kept = f" The {part.stat().st_size:,} bytes received so far are kept in {part}; running again resumes." if part.exists() else ""
        raise DownloadError(
            f"Could not download {url} ({error}). Download it by other means and place it at {path}.{kept}"
        ) from error
    try:
        verify_coco_file(part, expected)
    except ValueError as error:
        part.unlink()  # resuming a wrong file would only make it longer
        raise ValueError(f"The download from {url} is not a valid coco.pt and was deleted: {error}") from error
    os.replace(part, path)
    return path


# ---------------------------------------------------------------------------
# Building from the raw COCO 2014 release

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokenize(caption: str, max_words: int = MAX_WORDS) -> List[str]:
    """
    Inputs:
    - caption: raw text, e.g. "A man riding a horse."
    - max_words: words kept at most

    Returns:
    - words: lower-case, punctuation removed, cut to max_words
    """
    return caption.lower().translate(_PUNCTUATION).split()[:max_words]


def build_vocab(tokenized: Sequence[List[str]], min_count: int) -> dict:
    """
    Inputs:
    - tokenized: word lists of the training captions
    - min_count: words seen fewer times become <UNK>

    Returns:
    - vocab: specials first, then the kept words, most frequent first (ties
      alphabetical, so the result does not depend on caption order)
    """
    counts = Counter(word for words in tokenized for word in words)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return make_vocab(kept)


def encode_words(words: List[str], token_to_idx: Dict[str, int]) -> np.ndarray:
    """
    Returns:
    - int64 (17,): <START>, the words (unknown ones as <UNK>), <END>, <NULL>s
    """
    caption = np.full(CAPTION_LENGTH, NULL, dtype=np.int64)
    caption[0] = START
    caption[1 : len(words) + 1] = [token_to_idx.get(w, UNK) for w in words]
    caption[len(words) + 1] = END
    return caption


def read_coco_captions(root: Path, split: str, max_images: Optional[int] = None) -> List[Tuple[int, Path, List[str]]]:
    """
    Read one split of the COCO 2014 captions.

    Inputs:
    - root: folder with annotations/captions_{split}2014.json and {split}2014/
    - split: "train" or "val"
    - max_images: keep only the first images (by id); None for all

    Returns:
    - a list of (image id, image file, raw captions), by image id; images
      without captions are left out
    """
    json_path = root / "annotations" / f"captions_{split}2014.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"No COCO captions file at {json_path} (expected the COCO 2014 layout under {root})")
    try:
        with open(json_path, encoding="utf-8") as f:
            coco = json.load(f)
        files = {int(image["id"]): image["file_name"] for image in coco["images"]}
        captions: Dict[int, List[Tuple[int, str]]] = {}
        for annotation in coco["annotations"]:
            captions.setdefault(int(annotation["image_id"]), []).append((int(annotation["id"]), annotation["caption"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{json_path}: not a COCO captions file ({error!r})") from error
    unknown = sorted(set(captions) - set(files))
    if unknown:
        raise ValueError(f"{json_path}: captions refer to image ids {unknown[:5]} that 'images' does not list")
    ids = sorted(captions)[:max_images]
    # Caption order by annotation id, so the output does not depend on the JSON's order.
    return [(i, root / f"{split}2014" / files[i], [text for _, text in sorted(captions[i])]) for i in ids]


def write_coco_split(h5file, split: str, entries, vocab: dict, batch_size: int = 256, progress: bool = True) -> None:
    """
    Write one split (entries as returned by read_coco_captions), batch_size
    images at a time, each image once and one row per caption.
    """
    writer = H5SplitWriter(h5file, split)
    token_to_idx = vocab["token_to_idx"]
    bar = tqdm(total=len(entries), desc=f"{split} images", disable=not progress)
    for start in range(0, len(entries), batch_size):
        batch = entries[start : start + batch_size]
        images = np.stack([load_image(file) for _, file, _ in batch])
        first = writer.add_images(images, np.array([image_id for image_id, _, _ in batch], dtype=np.int64))
        rows, index = [], []
        for offset, (_, _, texts) in enumerate(batch):
            for text in texts:
                rows.append(encode_words(tokenize(text), token_to_idx))
                index.append(first + offset)
        writer.add_captions(np.stack(rows), np.array(index, dtype=np.int64))
        bar.update(len(batch))
    bar.close()


def build_coco_h5(
    root: PathLike,
    out_path: PathLike,
    min_count: int = 5,
    max_images: Optional[int] = None,
    batch_size: int = 256,
    progress: bool = True,
) -> Path:
    """
    Build a captioning HDF5 file from the raw COCO 2014 release:
    captions lower-cased, punctuation removed, cut to 15 words; words seen
    fewer than min_count times in the training captions become <UNK>; images
    resized to 112x112. Train comes from train2014, val from val2014.

    Inputs:
    - root: folder holding annotations/captions_train2014.json,
      annotations/captions_val2014.json, train2014/ and val2014/
    - out_path: the .h5 file to write (under a temporary name first)
    - min_count: vocabulary threshold
    - max_images: images per split at most (the first by id); None for all
    - batch_size: images held in memory at once
    - progress: show progress bars

    Returns:
    - out_path; load it with helper.data.datasets.load_dataset(out_path)
    """
    import h5py

    root, out_path = Path(root), Path(out_path)
    entries = {split: read_coco_captions(root, split, max_images) for split in SPLITS}
    vocab = build_vocab([tokenize(text) for _, _, texts in entries["train"] for text in texts], min_count)
    params = {"dataset": "coco2014", "min_count": min_count, "max_images": max_images, "max_words": MAX_WORDS}
    with atomic_output(out_path) as tmp:
        with h5py.File(tmp, "w") as h5file:
            write_h5_attrs(h5file, vocab, params)
            for split in SPLITS:
                write_coco_split(h5file, split, entries[split], vocab, batch_size, progress)
    return out_path


# ---------------------------------------------------------------------------
# Command line


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m helper.coco", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="download the assignment's coco.pt")
    fetch.add_argument("--path", default=None, help="where to put it (default: datasets/coco.pt)")
    build = commands.add_parser("build", help="build an HDF5 file from the raw COCO 2014 release")
    build.add_argument("root", help="folder with annotations/, train2014/, val2014/")
    build.add_argument("out", help="the .h5 file to write")
    build.add_argument("--min-count", type=int, default=5, help="rarer words become <UNK> (default 5)")
    build.add_argument("--max-images", type=int, default=None, help="images per split at most")
    args = parser.parse_args(argv)
    if args.command == "download":
        print(download_coco(args.path))
    else:
        print(build_coco_h5(args.root, args.out, min_count=args.min_count, max_images=args.max_images))


if __name__ == "__main__":
    main()
