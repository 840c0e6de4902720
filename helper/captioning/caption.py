"""
Caption image files with a trained model.

    python -m helper.caption runs/attn/best.pt photo.jpg drawing.png
    python -m helper.caption runs/attn/best.pt photo.jpg --beam-size 3 --attention-map attention.png

Any image that PIL reads (any size, mode or format) is turned into RGB and
resized to the training images' size, as the data sets' images were
(helper.data.coco.load_image). Prints one line per image: its path and caption.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from helper.captioning.checkpoint import build_model, load_checkpoint
from helper.captioning.decoding import decode_captions, generate_captions
from helper.captioning.plotting import caption_words, plot_samples
from helper.common.cli import add_decoding_options, run_command
from helper.common.utils import pick_device
from helper.data.format import IMAGE_SHAPE, load_image


def read_images(paths: Sequence[Path], size: int = IMAGE_SHAPE[1]) -> torch.Tensor:
    """
    Inputs:
    - paths: image files
    - size: side of the square images the model was trained on

    Returns:
    - images: uint8 (N, 3, size, size)

    Raises FileNotFoundError for a missing file and ValueError naming a
    file that PIL cannot read as an image.
    """
    from PIL import UnidentifiedImageError

    images = []
    for path in paths:
        try:
            images.append(load_image(Path(path), size))
        except FileNotFoundError:
            raise
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise ValueError(f"{path} is not an image file that PIL can read ({error})") from error
    return torch.from_numpy(np.stack(images))


def caption_files(
    checkpoint_path: Path,
    paths: Sequence[Path],
    beam_size: int = 1,
    length_penalty: float = 0.0,
    max_length: int = 15,
    device: str = "auto",
) -> Tuple[List[str], torch.Tensor, Optional[torch.Tensor]]:
    """
    Caption image files with a checkpoint's model.

    Inputs:
    - checkpoint_path: a checkpoint of helper.train
    - paths: image files
    - beam_size: 1 for greedy decoding, K > 1 for beam search
    - length_penalty: beam search's alpha
    - max_length: words to generate at most
    - device: where to run

    Returns a tuple of:
    - captions: one string per image (without <START>/<END>)
    - images: uint8 (N, 3, 112, 112), as the model saw them
    - attn_weights: (N, max_length, Da, Da) for "attn", else None
    """
    if beam_size < 1 or max_length < 1:
        raise ValueError(f"--beam-size and --max-length must be >= 1; got {beam_size} and {max_length}")
    checkpoint = load_checkpoint(checkpoint_path)
    images = read_images(paths)
    device = pick_device(device)
    model = build_model(checkpoint).to(device)
    tokens, attn_weights = generate_captions(model, images.to(device), beam_size, max_length, length_penalty)
    decoded = decode_captions(tokens.cpu(), checkpoint["vocab"]["idx_to_token"])
    return [" ".join(caption_words(text)) for text in decoded], images, attn_weights


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m helper.caption`."""
    p = argparse.ArgumentParser(prog="python -m helper.caption", description="Caption image files with a trained model.")
    p.add_argument("checkpoint", type=Path, help="a checkpoint of helper.train (best.pt or last.pt)")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files (any size and format PIL reads)")
    add_decoding_options(p)
    p.add_argument("--max-length", type=int, default=15, help="words to generate at most (default 15)")
    p.add_argument("--attention-map", type=Path, metavar="OUT.png", help='"attn" models: draw each word\'s attention map')
    return p


def caption_command(args: argparse.Namespace) -> None:
    """Caption the files, print the captions, draw the attention maps when asked."""
    captions, images, attn_weights = caption_files(
        args.checkpoint, args.images, args.beam_size, args.length_penalty, args.max_length, args.device
    )
    if args.attention_map is not None and attn_weights is None:
        raise ValueError(f"--attention-map needs an attention model (cell attn); {args.checkpoint} has none")
    for path, caption in zip(args.images, captions):
        print(f"{path}: {caption}")
    if args.attention_map is not None:
        plot_samples(images, captions, attn_weights=attn_weights, path=args.attention_map)
        print(f"wrote {args.attention_map}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    The command line (see the module docstring).

    Returns:
    - the exit code: 0, 1 for bad input, 2 for bad options
    """
    return run_command(build_parser(), caption_command, argv)


if __name__ == "__main__":
    sys.exit(main())
