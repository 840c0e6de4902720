"""
Captioning data sets behind one loader.

    data = load_dataset("shapes")          # built in, generated offline
    data = load_dataset("coco")            # the assignment's coco.pt (downloaded once)
    data = load_dataset("path/to/file.h5") # a file in the common format (.pt, .h5, .hdf5)

Every data set comes as one dict, the format of the assignment's coco.pt, with
N rows per split (split is "train" or "val"), each row one (image, caption) pair:

- "{split}_images": uint8 (N, 3, 112, 112), RGB pixels in [0, 255].
- "{split}_captions": int64 (N, 17): <START>, at most 15 words, <END>, then
  <NULL> padding.
- "{split}_image_ids": int64 (N,): rows with the same id show the same image,
  and the captions of all those rows are that image's reference captions
  (an image may fill several rows). `references_by_image` groups them.
- "vocab": {"idx_to_token": list of str, "token_to_idx": dict str -> int},
  with <NULL> = 0, <START> = 1, <END> = 2, <UNK> = 3.

The "shapes" data set adds grounding: where each object is, and which word
names which object.

- "{split}_boxes": float32 (N, max_objects, 4): the box of each object of the
  row's image as (x0, y0, x1, y1) in pixels (x1, y1 exclusive); rows of
  absent objects are -1.
- "{split}_word_objects": int64 (N, 17): for each token of the caption (same
  positions as "{split}_captions"), the index of the object it names in
  "{split}_boxes", or -1 for tokens that name no object.

Files written by this package (the shapes cache, the COCO builder) are HDF5
with one group per split, images stored once and caption rows pointing at
them, so that big sets can be read lazily (see `helper.coco.CaptionH5Dataset`):

    attrs: format = "captioning-h5", format_version, vocab (JSON list), params (JSON)
    {split}/images       uint8 (M, 3, 112, 112)   one per distinct image
    {split}/image_ids    int64 (M,)
    {split}/boxes        float32 (M, max_objects, 4)      optional
    {split}/captions     int64 (N, 17)            one per caption row
    {split}/image_index  int64 (N,)               row -> index into images
    {split}/word_objects int64 (N, 17)                    optional

Data files lie in the repo's datasets/ folder unless $CAPTIONING_DATA_DIR
names another one. Loading never reads a partial file: writers use a
temporary name and rename when complete.
"""
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

DATA_DIR_ENV = "CAPTIONING_DATA_DIR"
SPLITS = ("train", "val")
SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")
NULL, START, END, UNK = range(4)
IMAGE_SHAPE = (3, 112, 112)
MAX_WORDS = 15
CAPTION_LENGTH = MAX_WORDS + 2
H5_FORMAT = "captioning-h5"
H5_FORMAT_VERSION = 1
# Small image chunks keep random access cheap for the lazy Dataset; fletcher32
# checksums make a damaged file fail on read instead of giving wrong pixels.
H5_IMAGE_CHUNK = 8
H5_ROW_CHUNK = 1024

PathLike = Union[str, os.PathLike]


# ---------------------------------------------------------------------------
# Paths and safe writing


def default_data_dir() -> Path:
    """
    Returns:
    - the folder of data files: $CAPTIONING_DATA_DIR when set, else the
      repo's datasets/ folder (found from this file, not from the CWD)
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "datasets"


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


# ---------------------------------------------------------------------------
# The format: vocabularies, validation, image grouping


def make_vocab(words: Sequence[str]) -> Dict[str, object]:
    """
    Inputs:
    - words: the ordinary words, in index order, without the special tokens

    Returns:
    - vocab: {"idx_to_token": [...], "token_to_idx": {...}} with the four
      special tokens first
    """
    idx_to_token = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
    return {"idx_to_token": idx_to_token, "token_to_idx": {t: i for i, t in enumerate(idx_to_token)}}


def check_vocab(vocab, source: str) -> None:
    """
    Raise ValueError (naming source) unless vocab is a valid vocabulary dict:
    both mappings present and inverse of each other, specials at 0..3.
    """
    if not isinstance(vocab, dict) or not {"idx_to_token", "token_to_idx"} <= set(vocab):
        raise ValueError(f"{source}: 'vocab' must be a dict with 'idx_to_token' and 'token_to_idx'; got {vocab!r:.200}")
    idx_to_token, token_to_idx = vocab["idx_to_token"], vocab["token_to_idx"]
    if not isinstance(idx_to_token, (list, tuple)) or not isinstance(token_to_idx, dict):
        raise ValueError(f"{source}: vocab['idx_to_token'] must be a list and vocab['token_to_idx'] a dict")
    if tuple(idx_to_token[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(
            f"{source}: the vocabulary must start with {list(SPECIAL_TOKENS)}; "
            f"got {list(idx_to_token[: len(SPECIAL_TOKENS)])}"
        )
    if len(token_to_idx) != len(idx_to_token) or any(
        token_to_idx.get(token) != i for i, token in enumerate(idx_to_token)
    ):
        raise ValueError(f"{source}: vocab['token_to_idx'] is not the inverse of vocab['idx_to_token']")


def _check_tensor(data: dict, key: str, dtype: torch.dtype, shape: Tuple, source: str) -> torch.Tensor:
    """
    Raise ValueError unless data[key] is a tensor of the dtype and shape
    (None in shape matches any size).

    Returns:
    - the tensor
    """
    value = data[key]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{source}: {key} must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype != dtype:
        raise ValueError(f"{source}: {key} must have dtype {dtype}; got {value.dtype}")
    if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        wanted = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{source}: {key} must have shape {wanted}; got {tuple(value.shape)}")
    return value


def check_format(data, source: str = "<data>") -> None:
    """
    Check that data follows the common format (see the module docstring).

    Inputs:
    - data: the dict to check
    - source: what to call it in error messages, usually its file name

    Raises ValueError naming source and the first problem found: a missing
    key, a wrong type, dtype or shape, splits whose keys disagree in length,
    captions not starting with <START> or holding indices outside the
    vocabulary, a bad vocabulary, bad grounding data.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a dict of tensors; got {type(data).__name__}")
    required = ["vocab"] + [f"{s}_{k}" for s in SPLITS for k in ("images", "captions", "image_ids")]
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{source}: missing keys {missing}; it has {sorted(data)}")
    check_vocab(data["vocab"], source)
    vocab_size = len(data["vocab"]["idx_to_token"])
    for split in SPLITS:
        images = _check_tensor(data, f"{split}_images", torch.uint8, (None, *IMAGE_SHAPE), source)
        captions = _check_tensor(data, f"{split}_captions", torch.int64, (None, CAPTION_LENGTH), source)
        ids = _check_tensor(data, f"{split}_image_ids", torch.int64, (None,), source)
        lengths = {"images": len(images), "captions": len(captions), "image_ids": len(ids)}
        if f"{split}_boxes" in data:
            boxes = _check_tensor(data, f"{split}_boxes", torch.float32, (None, None, 4), source)
            lengths["boxes"] = len(boxes)
        if f"{split}_word_objects" in data:
            word_objects = _check_tensor(data, f"{split}_word_objects", torch.int64, (None, CAPTION_LENGTH), source)
            lengths["word_objects"] = len(word_objects)
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{source}: the {split} keys must have one row each per example; got lengths {lengths}")
        if len(captions) == 0:
            raise ValueError(f"{source}: the {split} split is empty")
        if captions.min() < 0 or captions.max() >= vocab_size:
            raise ValueError(
                f"{source}: {split}_captions holds indices in [{captions.min()}, {captions.max()}]; "
                f"the vocabulary has {vocab_size} tokens"
            )
        if (captions[:, 0] != START).any():
            bad = int((captions[:, 0] != START).nonzero()[0])
            raise ValueError(f"{source}: every caption must start with <START> ({START}); row {bad} of {split}_captions does not")
        if f"{split}_word_objects" in data:
            num_objects = data[f"{split}_boxes"].shape[1] if f"{split}_boxes" in data else 0
            if word_objects.min() < -1 or word_objects.max() >= num_objects:
                raise ValueError(
                    f"{source}: {split}_word_objects must hold -1 or an object index below {num_objects}; "
                    f"got values in [{word_objects.min()}, {word_objects.max()}]"
                )


def image_ids_from_pixels(images: torch.Tensor) -> torch.Tensor:
    """
    Give identical images the same id (for files such as coco.pt that store
    no ids): ids count distinct images in order of first appearance.

    Inputs:
    - images: uint8 (N, 3, H, W)

    Returns:
    - image_ids: int64 (N,)
    """
    first_seen: Dict[bytes, int] = {}
    ids = []
    for image in images.contiguous().numpy():
        digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        ids.append(first_seen.setdefault(digest, len(first_seen)))
    return torch.tensor(ids, dtype=torch.int64)


def references_by_image(image_ids: torch.Tensor, captions: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """
    Group caption rows by image, for metrics that compare a generated
    caption with all reference captions of its image.

    Inputs:
    - image_ids: int64 (N,), as in data["val_image_ids"]
    - captions: int64 (N, T), as in data["val_captions"]

    Returns a tuple of:
    - first_rows: int64 (M,), for each of the M distinct images (in order of
      first appearance) the first row that shows it; images[first_rows]
      gives each image once
    - references: list of M int64 tensors of shape (K_m, T), the captions of
      all rows showing image m
    """
    if image_ids.dim() != 1 or captions.dim() != 2 or len(image_ids) != len(captions):
        raise ValueError(
            f"image_ids must be (N,) and captions (N, T) with the same N; "
            f"got {tuple(image_ids.shape)} and {tuple(captions.shape)}"
        )
    groups: Dict[int, List[int]] = {}
    for row, image_id in enumerate(image_ids.tolist()):
        groups.setdefault(image_id, []).append(row)
    first_rows = torch.tensor([rows[0] for rows in groups.values()], dtype=torch.int64)
    references = [captions[rows] for rows in groups.values()]
    return first_rows, references


# ---------------------------------------------------------------------------
# HDF5 files


class H5SplitWriter:
    """
    Appends the images and caption rows of one split to an open HDF5 file
    (layout in the module docstring), a batch at a time, so that sets larger
    than memory can be written.
    """

    def __init__(self, h5file, split: str, max_objects: int = 0):
        """
        Inputs:
        - h5file: an h5py.File open for writing
        - split: "train" or "val"
        - max_objects: boxes per image for grounding data; 0 for none
        """
        group = h5file.create_group(split)

        def make(name, shape, dtype, chunk_rows):
            return group.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=dtype,
                chunks=(chunk_rows, *shape),
                fletcher32=True,
            )

        self.images = make("images", IMAGE_SHAPE, "u1", H5_IMAGE_CHUNK)
        self.image_ids = make("image_ids", (), "i8", H5_ROW_CHUNK)
        self.captions = make("captions", (CAPTION_LENGTH,), "i8", H5_ROW_CHUNK)
        self.image_index = make("image_index", (), "i8", H5_ROW_CHUNK)
        self.boxes = make("boxes", (max_objects, 4), "f4", H5_ROW_CHUNK) if max_objects else None
        self.word_objects = make("word_objects", (CAPTION_LENGTH,), "i8", H5_ROW_CHUNK) if max_objects else None

    @staticmethod
    def _append(dataset, array: np.ndarray) -> int:
        """Append rows to a resizable dataset; returns the index of the first new row."""
        start = dataset.shape[0]
        dataset.resize(start + len(array), axis=0)
        dataset[start:] = array
        return start

    def add_images(self, images: np.ndarray, image_ids: np.ndarray, boxes: Optional[np.ndarray] = None) -> int:
        """
        Inputs:
        - images: uint8 (B, 3, 112, 112)
        - image_ids: int64 (B,)
        - boxes: float32 (B, max_objects, 4) when the writer has grounding data

        Returns:
        - the index in the split's images of the first added image
        """
        if (boxes is None) != (self.boxes is None):
            raise ValueError("boxes must be given exactly when the writer was made with max_objects > 0")
        if boxes is not None:
            self._append(self.boxes, boxes)
        self._append(self.image_ids, image_ids)
        return self._append(self.images, images)

    def add_captions(self, captions: np.ndarray, image_index: np.ndarray, word_objects: Optional[np.ndarray] = None) -> None:
        """
        Inputs:
        - captions: int64 (R, 17)
        - image_index: int64 (R,), the image of each row (index into images)
        - word_objects: int64 (R, 17) when the writer has grounding data
        """
        if (word_objects is None) != (self.word_objects is None):
            raise ValueError("word_objects must be given exactly when the writer was made with max_objects > 0")
        if word_objects is not None:
            self._append(self.word_objects, word_objects)
        self._append(self.image_index, image_index)
        self._append(self.captions, captions)


def write_h5_attrs(h5file, vocab: dict, params: dict) -> None:
    """
    Store the format marker, the vocabulary and the parameters that made the
    file as attributes of an open HDF5 file.
    """
    h5file.attrs["format"] = H5_FORMAT
    h5file.attrs["format_version"] = H5_FORMAT_VERSION
    h5file.attrs["vocab"] = json.dumps(vocab["idx_to_token"])
    h5file.attrs["params"] = json.dumps(params, sort_keys=True)


def open_h5(path: Path):
    """
    Open a captioning HDF5 file for reading.

    Returns:
    - the open h5py.File (use it in a with-block)

    Raises FileNotFoundError for a missing file, ValueError for a file that
    is not a readable captioning HDF5 file of the current format version.
    """
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"No data file at {path}")
    try:
        h5file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file, truncated or corrupt ({error})") from error
    found = (h5file.attrs.get("format"), h5file.attrs.get("format_version"))
    if found != (H5_FORMAT, H5_FORMAT_VERSION):
        h5file.close()
        raise ValueError(
            f"{path}: expected a '{H5_FORMAT}' file of version {H5_FORMAT_VERSION}; "
            f"got format={found[0]!r} version={found[1]!r}"
        )
    return h5file


def read_h5_params(path: PathLike) -> dict:
    """
    Returns:
    - the parameters stored with a captioning HDF5 file when it was made
    """
    path = Path(path)
    with open_h5(path) as h5file:
        return json.loads(h5file.attrs["params"])


def _read_h5_split(group, split: str, path: Path) -> Dict[str, torch.Tensor]:
    """Read one split group into the row-per-caption keys of the common format."""
    images = group["images"][()]
    image_ids = group["image_ids"][()]
    index = group["image_index"][()]
    if len(index) and (index.min() < 0 or index.max() >= len(images)):
        raise ValueError(f"{path}: {split}/image_index points outside the {len(images)} stored images")
    if len(image_ids) != len(images):
        raise ValueError(f"{path}: {split}/image_ids has {len(image_ids)} rows for {len(images)} images")
    one_row_per_image = np.array_equal(index, np.arange(len(images)))
    rows = (lambda a: a) if one_row_per_image else (lambda a: a[index])  # skip a copy when possible
    out = {
        f"{split}_images": torch.from_numpy(rows(images)),
        f"{split}_captions": torch.from_numpy(group["captions"][()]),
        f"{split}_image_ids": torch.from_numpy(rows(image_ids)),
    }
    if "boxes" in group:
        out[f"{split}_boxes"] = torch.from_numpy(rows(group["boxes"][()]))
        out[f"{split}_word_objects"] = torch.from_numpy(group["word_objects"][()])
    return out


def read_h5(path: PathLike) -> dict:
    """
    Read a whole captioning HDF5 file into memory.

    Inputs:
    - path: the .h5 / .hdf5 file

    Returns:
    - data: the dict of the common format (one row per caption; images are
      repeated for images with several captions)

    Raises FileNotFoundError for a missing file, ValueError (naming the file)
    for a damaged, truncated or malformed one.
    """
    path = Path(path)
    with open_h5(path) as h5file:
        try:
            data = {"vocab": make_vocab(json.loads(h5file.attrs["vocab"]))}
            for split in SPLITS:
                if split not in h5file:
                    raise ValueError(f"{path}: no '{split}' group; it has {list(h5file)}")
                data.update(_read_h5_split(h5file[split], split, path))
        except (OSError, KeyError) as error:
            raise ValueError(f"{path}: damaged or incomplete HDF5 file ({error})") from error
    check_format(data, str(path))
    return data


# ---------------------------------------------------------------------------
# .pt files and the loader


def load_pt(path: PathLike) -> dict:
    """
    Load a data dict saved with torch.save (such as the assignment's coco.pt),
    adding image ids (from the pixels) when the file has none.

    Inputs:
    - path: the .pt file

    Returns:
    - data: the dict of the common format

    Raises FileNotFoundError for a missing file, ValueError (naming the file)
    for a truncated, corrupt or malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {path}")
    try:
        # weights_only: a downloaded file can hold tensors and plain containers, never code.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # RuntimeError, EOFError, UnpicklingError, ... depending on the damage
        unsafe = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        if unsafe:
            raise ValueError(
                f"{path}: holds objects other than tensors, lists, dicts, strings and numbers, "
                f"which are not loaded from data files ({unsafe[0]})"
            ) from error
        raise ValueError(f"{path}: cannot be read by torch.load, truncated or corrupt ({error})") from error
    if isinstance(data, dict):
        for split in SPLITS:
            if f"{split}_image_ids" not in data and isinstance(data.get(f"{split}_images"), torch.Tensor):
                data[f"{split}_image_ids"] = image_ids_from_pixels(data[f"{split}_images"])
    check_format(data, str(path))
    return data


def load_coco_captions(path: Optional[PathLike] = None, download: bool = True, verbose: bool = True) -> dict:
    """
    Load the assignment's COCO Captions subset, downloading it first when it
    is not there.

    Inputs:
    - path: the coco.pt file; None for coco.pt in the data folder (the
      repo's datasets/, i.e. "./datasets/coco.pt" from the repo root)
    - download: fetch the file when it is missing (else FileNotFoundError)
    - verbose: print each key with its shape and dtype, as the assignment does

    Returns:
    - data: the dict of the common format
    """
    path = Path(path) if path is not None else default_data_dir() / "coco.pt"
    if not path.is_file():
        if not download:
            raise FileNotFoundError(f"No COCO data at {path}; load with download=True or place coco.pt there by hand")
        from .coco import download_coco  # here, not at the top: coco.py imports this module

        download_coco(path)
    data = load_pt(path)
    if verbose:
        for key, value in data.items():
            described = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else f"keys {list(value)}"
            print(key, described)
    return data


DATASET_NAMES = ("shapes", "coco")


def load_dataset(name_or_path: PathLike, data_dir: Optional[PathLike] = None, download: bool = True, **options) -> dict:
    """
    Load a captioning data set in the common format (see the module docstring).

    Inputs:
    - name_or_path: "shapes" (generated here, cached in the data folder),
      "coco" (coco.pt in the data folder, downloaded when missing), or the
      path of a .pt, .h5 or .hdf5 file
    - data_dir: the data folder; None for default_data_dir()
    - download: for "coco", fetch the file when it is missing
    - options: for "shapes", the generator's options (see
      helper.shapes.load_shapes: num_train, num_val, seed, ...)

    Returns:
    - data: dict with train_/val_ images, captions, image_ids (and, for
      shapes, boxes and word_objects) and vocab
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    name = str(name_or_path)
    if name == "shapes":
        from .shapes import load_shapes

        return load_shapes(data_dir=data_dir, **options)
    if options:
        raise TypeError(f"options {sorted(options)} apply to the 'shapes' data set only; got them for {name!r}")
    if name == "coco":
        return load_coco_captions(data_dir / "coco.pt", download=download, verbose=False)
    path = Path(name_or_path)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return load_pt(path)
    if suffix in (".h5", ".hdf5"):
        return read_h5(path)
    raise ValueError(
        f"Unknown data set {name!r}: expected one of {list(DATASET_NAMES)} or the path of a .pt, .h5 or .hdf5 file"
    )
