"""
Data files of the common format (helper/data/format.py): where they lie, and
how they are read and written.

Files written here (the shapes cache, the COCO builder) are HDF5 with one
group per split, images stored once and caption rows pointing at them:

    attrs: format = "captioning-h5", format_version, vocab (JSON list), params (JSON)
    {split}/images       uint8 (M, 3, 112, 112)   one per distinct image
    {split}/image_ids    int64 (M,)
    {split}/boxes        float32 (M, max_objects, 4)      optional
    {split}/captions     int64 (N, 17)            one per caption row
    {split}/image_index  int64 (N,)               row -> index into images
    {split}/word_objects int64 (N, 17)                    optional

They are written batch by batch, so that a set larger than memory can be
written, and read whole into memory (`read_h5`): the 123,000 images of COCO
2014 at 112x112 take 4.6 GB. The assignment's coco.pt is a torch.save file
(`load_pt`).

Data files lie in the repo's datasets/ folder unless $CAPTIONING_DATA_DIR
names another one. Loading never reads a partial file: writers use a
temporary name and rename when complete (helper.common.files.atomic_output).
"""
import json
import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from helper.common.files import PathLike
from helper.data.format import CAPTION_LENGTH, IMAGE_SHAPE, SPLITS, check_format, image_ids_from_pixels, make_vocab

DATA_DIR_ENV = "CAPTIONING_DATA_DIR"
H5_FORMAT = "captioning-h5"
H5_FORMAT_VERSION = 1
# Chunked so that a file grows batch by batch; fletcher32 checksums make a
# damaged file fail on read instead of giving wrong pixels.
H5_IMAGE_CHUNK = 8
H5_ROW_CHUNK = 1024


def default_data_dir() -> Path:
    """
    Returns:
    - the folder of data files: $CAPTIONING_DATA_DIR when set, else the
      repo's datasets/ folder (found from this file, not from the CWD)
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "datasets"



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
