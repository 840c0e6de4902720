"""
Score a trained model on a split of its data set.

    python -m helper.evaluate runs/attn/best.pt
    python -m helper.evaluate runs/attn/best.pt --beam-size 3 --split val --data shapes

Captions every distinct image of the split (greedy, or beam search with
--beam-size K), scores the captions against all references of each image
(BLEU-1..4, CIDEr-D, the share of exact matches; the attention grounding
score for "attn" on data with grounding data, such as "shapes"), prints the metrics and writes them, with
every generated caption, as JSON: to --out, or next to the checkpoint as
CHECKPOINT-SPLIT-beamK.json.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from helper.captioning.checkpoint import build_model, describe, load_checkpoint
from helper.captioning.metrics import evaluate_captions, exact_match, format_metrics
from helper.captioning.splits import split_arrays
from helper.common.cli import add_decoding_options, run_command
from helper.common.files import write_json
from helper.common.utils import pick_device
from helper.data.datasets import load_dataset


def build_parser() -> argparse.ArgumentParser:
    """The options of `python -m helper.evaluate`."""
    p = argparse.ArgumentParser(
        prog="python -m helper.evaluate", description="Score a checkpoint's captions on a data split."
    )
    p.add_argument("checkpoint", type=Path, help="a checkpoint of helper.train (best.pt or last.pt)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="split to score (default val)")
    p.add_argument("--data", help="data set name or file (default: the one the model was trained on)")
    add_decoding_options(p)
    p.add_argument("--max-images", type=int, help="score the first N distinct images only")
    p.add_argument("--batch-size", type=int, default=100, help="images captioned at once (default 100)")
    p.add_argument("--out", type=Path, help="JSON file to write (default: next to the checkpoint)")
    return p


def default_output(checkpoint: Path, split: str, beam_size: int) -> Path:
    """Where the metrics of a checkpoint go without --out, e.g. runs/attn/best-val-beam3.json."""
    return checkpoint.with_name(f"{checkpoint.stem}-{split}-beam{beam_size}.json")


def evaluate_checkpoint(
    checkpoint_path: Path,
    split: str = "val",
    data: Optional[dict] = None,
    data_name: Optional[str] = None,
    beam_size: int = 1,
    length_penalty: float = 0.0,
    max_images: Optional[int] = None,
    batch_size: int = 100,
    device: str = "auto",
) -> dict:
    """
    Score a checkpoint's model on a split.

    Inputs:
    - checkpoint_path: a checkpoint of helper.train
    - split: "val" or "train"
    - data: the data set, already loaded; None to load data_name
    - data_name: data set name or file; None for the one of the run
    - beam_size, length_penalty: decoding (beam_size 1: greedy)
    - max_images: score the first N distinct images only; None for all
    - batch_size: images captioned at once
    - device: where to run

    Returns a dict (the JSON that main writes):
    - metrics: bleu1..bleu4, cider, exact (the share of images captioned
      word for word as one of their references), and grounding
    - checkpoint, data, split, beam_size, length_penalty, images (count),
      seconds, images_per_second
    - predictions: {image id: generated caption}
    """
    if beam_size < 1 or max_images is not None and max_images < 1 or batch_size < 1:
        raise ValueError(
            f"--beam-size, --max-images and --batch-size must be >= 1; got {beam_size}, {max_images}, {batch_size}"
        )
    checkpoint = load_checkpoint(checkpoint_path)
    data_name = data_name or checkpoint["config"]["data"]
    if data is None:
        data = load_dataset(data_name)
    vocab = data["vocab"]
    if vocab["idx_to_token"] != checkpoint["vocab"]["idx_to_token"]:
        raise ValueError(f"the data {data_name} has another vocabulary than the model of {checkpoint_path}")
    rows = split_arrays(data, split, max_images)
    device = pick_device(device)
    model = build_model(checkpoint).to(device)

    start = time.perf_counter()
    result = evaluate_captions(
        model, rows["images"], rows["captions"], rows["image_ids"], vocab["idx_to_token"],
        batch_size=batch_size, beam_size=beam_size, length_penalty=length_penalty, device=device,
        boxes=rows.get("boxes"), word_objects=rows.get("word_objects"),
    )
    seconds = time.perf_counter() - start
    return {
        "metrics": {**result["metrics"], "exact": exact_match(result)},
        "checkpoint": str(checkpoint_path),
        "model": describe(checkpoint),
        "data": str(data_name),
        "split": split,
        "beam_size": beam_size,
        "length_penalty": length_penalty,
        "images": len(result["image_ids"]),
        "seconds": seconds,
        "images_per_second": len(result["image_ids"]) / seconds if seconds > 0 else None,
        "predictions": {str(k): v for k, v in result["predictions"].items()},
    }


def evaluate_command(args: argparse.Namespace) -> None:
    """Evaluate, print the metrics and write the report."""
    report = evaluate_checkpoint(
        args.checkpoint, args.split, data_name=args.data, beam_size=args.beam_size,
        length_penalty=args.length_penalty, max_images=args.max_images, batch_size=args.batch_size,
        device=args.device,
    )
    out = args.out or default_output(args.checkpoint, args.split, args.beam_size)
    write_json(out, report)
    print(f"{report['model']}; {report['split']} split of {report['data']}: {report['images']} images, "
          f"beam {report['beam_size']}")
    print(format_metrics(report["metrics"]))
    print(f"wrote {out}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    The command line (see the module docstring).

    Returns:
    - the exit code: 0, 1 for bad input, 2 for bad options
    """
    return run_command(build_parser(), evaluate_command, argv)


if __name__ == "__main__":
    sys.exit(main())
