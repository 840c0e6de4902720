"""
The trained model of a submission, for helper.grade: loaded weights only,
captioned by the submission's own CaptioningRNN in its sandbox, scored by
the grader.

The grader (trusted) reads the weights file with torch.load(weights_only=True)
(helper.captioning.checkpoint.load_checkpoint: tensors and plain data, never code) and
the validation split of the data the model was trained on, and writes a job
file: the state dict, the model's arguments, the vocabulary and the distinct
validation images, without their references. The child

    python -m helper.instructor.grade_model MODULE JOB OUT

builds the submission's CaptioningRNN, loads the state dict (strict), and
captions the images greedily into OUT (an int64 tensor). The grader checks
what came back, decodes it and scores it against the references, which never
entered the sandbox: BLEU-4, CIDEr-D and the share of exact matches
(helper.captioning.metrics). Points follow a threshold table: the most points of a row
whose metric reaches its threshold.
"""
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from helper.captioning.checkpoint import describe, load_checkpoint
from helper.captioning.decoding import decode_captions
from helper.captioning.metrics import caption_metrics, tokenize
from helper.common.utils import import_file
from helper.data.datasets import load_dataset
from helper.data.format import references_by_image

MAX_WEIGHTS_BYTES = 500 << 20
DEFAULT_TABLE = "exact>=0.5:10,exact>=0.25:7,cider>=3:4,cider>=1:2"
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "exact")


def parse_table(text: str) -> List[Tuple[str, float, float]]:
    """
    'exact>=0.5:10,cider>=3:4' -> [("exact", 0.5, 10.0), ("cider", 3.0, 4.0)].
    ValueError naming the bad row otherwise.
    """
    rows = []
    for row in filter(None, (r.strip() for r in text.split(","))):
        match = re.fullmatch(r"(\w+)\s*>=\s*([0-9.]+)\s*:\s*([0-9.]+)", row)
        if not match or match.group(1) not in METRICS:
            raise ValueError(f"bad threshold row {row!r}: write METRIC>=VALUE:POINTS with METRIC one of {METRICS}")
        rows.append((match.group(1), float(match.group(2)), float(match.group(3))))
    return rows


def table_points(table, metrics: Dict[str, float]) -> float:
    """The most points of a row whose metric reaches its threshold (0 when none does)."""
    return max([points for name, value, points in table if metrics.get(name, -1.0) >= value], default=0.0)


def validation_split(data: dict, max_images: Optional[int]) -> dict:
    """The distinct validation images and their references: {"images", "references" (lists of strings)}."""
    first_rows, reference_rows = references_by_image(data["val_image_ids"], data["val_captions"])
    if max_images:
        first_rows, reference_rows = first_rows[:max_images], reference_rows[:max_images]
    idx_to_word = data["vocab"]["idx_to_token"]
    references = [[tokenize(t) for t in decode_captions(rows, idx_to_word)] for rows in reference_rows]
    return {"images": data["val_images"][first_rows].contiguous(), "references": references}


def load_data_cached(name: str, cache: dict) -> dict:
    """load_dataset(name) once per batch (without downloading)."""
    if name not in cache:
        cache[name] = load_dataset(name, download=False)
    return cache[name]


def prepare_job(weights: Path, job: Path, data_name: Optional[str], max_images: Optional[int], cache: dict) -> dict:
    """
    Read a submitted weights file and write the child's job file.

    Inputs:
    - weights: the submitted checkpoint (helper.train's format)
    - job: the file to write (inside the sandbox's read-only folder)
    - data_name: the data to score on; None for the one the model was trained on
    - max_images: score the first N distinct validation images only
    - cache: loaded data sets, shared over the batch

    Returns:
    - {"references", "idx_to_word", "model"} for score_captions

    Raises ValueError with the reason when the file is missing, too big,
    damaged, not a checkpoint, or made for other data.
    """
    if not weights.is_file():
        raise ValueError(f"no trained model in the submission (expected {weights.name})")
    if weights.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{weights.name} is larger than {MAX_WEIGHTS_BYTES >> 20} MB")
    checkpoint = load_checkpoint(weights)  # weights_only: no code runs
    try:
        state, config, vocab = checkpoint["model"], dict(checkpoint["model_config"]), checkpoint["vocab"]
        name = data_name or checkpoint["config"]["data"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{weights.name} lacks {error} (not a model saved by the notebook's training)") from error
    try:
        data = load_data_cached(str(name), cache)
    except Exception as error:  # noqa: BLE001 - any failure to load is a reason, not a crash of the batch
        raise ValueError(f"cannot load the data {name!r} the model was trained on: {error}") from error
    if list(vocab["idx_to_token"]) != list(data["vocab"]["idx_to_token"]):
        raise ValueError(f"{weights.name} has another vocabulary than the data {name!r}")
    split = validation_split(data, max_images)
    torch.save(
        {"state": state, "config": config, "word_to_idx": dict(vocab["token_to_idx"]), "images": split["images"]},
        job,
    )
    return {
        "references": split["references"],
        "idx_to_word": list(vocab["idx_to_token"]),
        "model": describe(checkpoint),
        "data": str(name),
    }


def score_captions(out: Path, prepared: dict) -> Dict[str, float]:
    """
    Score the captions the child wrote.

    Returns:
    - {"bleu1".."bleu4", "cider", "exact"}; ValueError when the file is
      missing or not an int tensor with one row per image
    """
    if not out.is_file():
        raise ValueError("the model produced no captions")
    captions = torch.load(out, weights_only=True)
    count = len(prepared["references"])
    if not isinstance(captions, torch.Tensor) or captions.dim() != 2 or len(captions) != count:
        raise ValueError(f"the model's captions are not a (N={count}, T) tensor of word indices")
    if captions.dtype not in (torch.int64, torch.int32) or captions.numel() and (
        captions.min() < 0 or captions.max() >= len(prepared["idx_to_word"])
    ):
        raise ValueError("the model's captions hold values that are not word indices")
    predictions = [tokenize(t) for t in decode_captions(captions.long(), prepared["idx_to_word"])]
    metrics = caption_metrics(predictions, prepared["references"])
    metrics["exact"] = sum(p in refs for p, refs in zip(predictions, prepared["references"])) / count
    return metrics


def caption_job(module_path: Path, job_path: Path, out: Path, batch_size: int = 100) -> None:
    """The child's work (see the module docstring): build, load, caption, save."""
    from helper.captioning.decoding import generate_captions

    module = import_file(module_path)
    job = torch.load(job_path, weights_only=True)
    model = module.CaptioningRNN(job["word_to_idx"], image_encoder_pretrained=False, **job["config"])
    model.load_state_dict(job["state"])
    model.eval()
    captions = []
    with torch.no_grad():
        for start in range(0, len(job["images"]), batch_size):
            batch, _ = generate_captions(model, job["images"][start : start + batch_size], 1, 16, 0.0)
            captions.append(torch.as_tensor(batch).long().cpu())
    torch.save(torch.cat(captions), out)


def error_file(out: Path) -> Path:
    """Where the child writes why captioning failed."""
    return out.with_suffix(".error")


def main(argv) -> int:
    """The child's command line: MODULE JOB OUT; 1 (and OUT.error saying why) when captioning fails."""
    out = Path(argv[2])
    try:
        caption_job(Path(argv[0]), Path(argv[1]), out)
    except Exception as error:  # noqa: BLE001 - whatever the submission raises is the reason
        lines = str(error).strip().splitlines()
        error_file(out).write_text(f"{type(error).__name__}: {' '.join(l.strip() for l in lines[:3])}"[:500])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
