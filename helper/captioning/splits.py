"""
Slicing a data set (helper.data format) into what training and evaluation
use: one split's tensors, its first N distinct images, the distinct images
behind the caption rows.
"""
from typing import Dict, Optional, Tuple

import torch

from helper.data.format import references_by_image

SPLIT_KEYS = ("images", "captions", "image_ids", "boxes", "word_objects")


def unique_rows(image_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Inputs:
    - image_ids: int64 (N,), rows with the same id show the same image

    Returns a tuple of:
    - first: int64 (M,), the first row of each distinct image
    - image_of_row: int64 (N,), the index in first of each row's image
    """
    ids, image_of_row = torch.unique(image_ids, return_inverse=True)
    rows = torch.arange(len(image_ids))
    first = torch.full((len(ids),), len(image_ids)).scatter_reduce(0, image_of_row, rows, "amin")
    return first, image_of_row


def split_arrays(data: dict, split: str, max_images: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """
    One split's tensors without the split prefix.

    Inputs:
    - data: the data dict (helper.data)
    - split: "train" or "val"
    - max_images: keep the rows of the first max_images distinct images;
      None for all

    Returns:
    - dict of the split's SPLIT_KEYS that data has: images (N, 3, H, W),
      captions (N, T + 1), image_ids (N,) and, with grounding data, boxes
      (N, max_objects, 4) and word_objects (N, T + 1); one row per caption
    """
    arrays = {key: data[f"{split}_{key}"] for key in SPLIT_KEYS if f"{split}_{key}" in data}
    if max_images is not None:
        first_rows, _ = references_by_image(arrays["image_ids"], arrays["captions"])
        keep = torch.isin(arrays["image_ids"], arrays["image_ids"][first_rows[:max_images]])
        arrays = {key: value[keep] for key, value in arrays.items()}
    return arrays
