"""
Captioning data sets behind one loader.

    data = load_dataset("shapes")          # built in, generated offline
    data = load_dataset("coco")            # the assignment's coco.pt (downloaded once)
    data = load_dataset("path/to/file.h5") # a file in the common format (.pt, .h5, .hdf5)

Every data set comes as one dict of the common format (helper/data/format.py).
"""
from pathlib import Path
from typing import Optional

import torch

from helper.common.files import PathLike
from helper.data.coco import download_coco
from helper.data.shapes import load_shapes
from helper.data.storage import default_data_dir, load_pt, read_h5


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
      helper.data.shapes.load_shapes: num_train, num_val, seed, ...)

    Returns:
    - data: dict with train_/val_ images, captions, image_ids (and, for
      shapes, boxes and word_objects) and vocab
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    name = str(name_or_path)
    if name == "shapes":
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
