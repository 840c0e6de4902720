"""
The common format of every captioning data set: one dict, the format of the
assignment's coco.pt, with N rows per split (split is "train" or "val"), each
row one (image, caption) pair:

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
"""
import hashlib
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

SPLITS = ("train", "val")
SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")
NULL, START, END, UNK = range(4)
IMAGE_SHAPE = (3, 112, 112)
MAX_WORDS = 15
CAPTION_LENGTH = MAX_WORDS + 2


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


def load_image(path: Path, size: int = IMAGE_SHAPE[1]) -> np.ndarray:
    """
    Returns:
    - uint8 (3, size, size): the RGB image at path, resized (aspect ratio not kept)
    """
    from PIL import Image  # only the COCO builder and the caption command read picture files

    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}")
    with Image.open(path) as image:
        image = image.convert("RGB").resize((size, size), Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
