"""Tiny stand-ins for real data files, shared by the data tests."""

import torch

from helper.data.format import END, NULL, START, make_vocab

FAKE_WORDS = ["a", "cat", "dog", "sits", "runs"]


def fake_data(num_train: int = 6, num_val: int = 4, seed: int = 0, with_ids: bool = True) -> dict:
    """
    A valid data dict of the common format with random images and captions.

    Inputs:
    - num_train, num_val: rows per split
    - seed: for the random content
    - with_ids: include {split}_image_ids (coco.pt has none)

    Returns:
    - the dict; its rows show distinct images
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = make_vocab(FAKE_WORDS)
    data = {"vocab": vocab}
    for split, n in [("train", num_train), ("val", num_val)]:
        data[f"{split}_images"] = torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8, generator=generator)
        captions = torch.full((n, 17), NULL, dtype=torch.int64)
        captions[:, 0] = START
        captions[:, 1:4] = torch.randint(4, len(vocab["idx_to_token"]), (n, 3), generator=generator)
        captions[:, 4] = END
        data[f"{split}_captions"] = captions
        if with_ids:
            data[f"{split}_image_ids"] = torch.arange(n)
    return data
