"""
Tiny data sets and checkpoints for the tests of the command-line tools
(helper.train, helper.evaluate, helper.caption) and of checkpoints.
"""
from pathlib import Path

import torch

from helper.captioning.checkpoint import save_checkpoint
from helper.captioning.config import RunConfig
from helper.data.format import END, NULL, START, make_vocab

WORDS = ["a", "red", "blue", "circle", "square", "above"]
NAMING = {"red": 0, "blue": 1}  # words that name an object, and which box they name
# --no-freeze-encoder: the CPU default freezes the encoder; the tests train it too unless they say otherwise.
TINY = ["--no-freeze-encoder", "--hidden-dim", "16", "--wordvec-dim", "8", "--batch-size", "8", "--samples", "2", "--no-fast", "--no-progress"]


def tiny_data(num_train: int = 16, num_val: int = 4, refs: int = 2, seed: int = 0) -> dict:
    """
    A data dict of the common format (helper.data) with grounding data, as
    "shapes" has: random pixels, captions such as "a red circle above a
    blue square", two boxes per image.

    Inputs:
    - num_train: training rows (one per image)
    - num_val: validation images, each with `refs` rows (reference captions)
    - seed: for the random content

    Returns:
    - the dict
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = make_vocab(WORDS)
    index = vocab["token_to_idx"]
    data = {"vocab": vocab}
    for split, images, rows_per_image in [("train", num_train, 1), ("val", num_val, refs)]:
        n = images * rows_per_image
        pixels = torch.randint(0, 256, (images, 3, 112, 112), dtype=torch.uint8, generator=generator)
        captions = torch.full((n, 17), NULL, dtype=torch.int64)
        word_objects = torch.full((n, 17), -1, dtype=torch.int64)
        for row in range(n):
            first, second = ("red", "blue") if torch.rand(1, generator=generator) < 0.5 else ("blue", "red")
            words = ["a", first, "circle", "above", "a", second, "square"]
            captions[row, 0] = START
            captions[row, 1 : len(words) + 1] = torch.tensor([index[w] for w in words])
            captions[row, len(words) + 1] = END
            for t, word in enumerate(words, start=1):
                word_objects[row, t] = NAMING.get(word, -1)
        image_of_row = torch.arange(images).repeat_interleave(rows_per_image)
        data[f"{split}_images"] = pixels[image_of_row]
        data[f"{split}_captions"] = captions
        data[f"{split}_image_ids"] = image_of_row + (1000 if split == "val" else 0)
        boxes = torch.tensor([[0.0, 0.0, 56.0, 56.0], [56.0, 56.0, 112.0, 112.0]]).expand(images, 2, 4)
        data[f"{split}_boxes"] = boxes[image_of_row].contiguous()
        data[f"{split}_word_objects"] = word_objects
    return data


def write_tiny_data(path: Path, **options) -> Path:
    """Save tiny_data(**options) as a .pt file that `--data PATH` reads; returns path."""
    torch.save(tiny_data(**options), path)
    return path


def tiny_checkpoint(impl, path: Path, cell: str = "attn", data_path: str = "tiny.pt", seed: int = 0) -> Path:
    """
    Write a checkpoint of an untrained small model, as helper.train would
    (without training, to keep the tests fast).

    Inputs:
    - impl: the captioning module
    - path: the file to write
    - cell: "rnn", "lstm" or "attn"
    - data_path: the data set the "run" names in its config
    - seed: for the weights

    Returns:
    - path
    """
    torch.manual_seed(seed)
    config = RunConfig(cell=cell, data=str(data_path), hidden_dim=16, wordvec_dim=8, epochs=1, batch_size=8)
    vocab = make_vocab(WORDS)
    model = impl.CaptioningRNN(vocab["token_to_idx"], image_encoder_pretrained=False, **config.model_config())
    contents = {"model_config": config.model_config(), "vocab": vocab, "model": model.state_dict()}
    save_checkpoint(path, {**contents, "config": config.as_dict(), "epoch": 1})
    return path
