"""
The trained model of a submission, for helper.grade: read as tensors and
plain data before any of the submission's code runs
(helper.instructor.handin), built by the submission's own CaptioningRNN in a
worker (helper.grading, in the sandbox), which receives the grader's
validation images and sends back word indices; nothing else. The references
never leave the grader, the data set is the grader's own (--model-data; the
checkpoint's config never names a file), and the captions are scored here:
BLEU-4, CIDEr-D and the share of exact matches (helper.captioning.metrics).
Points follow a threshold table: the most points of a row whose metric
reaches its threshold.
"""
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from helper.captioning.decoding import decode_captions
from helper.captioning.metrics import caption_metrics, tokenize
from helper.data.datasets import load_dataset
from helper.data.format import references_by_image
from helper.grading.remote import RemoteError, Worker, WorkerLost
from helper.grading.sandbox import Limits

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


def grade_model(checkpoint: dict, module: Path, options, uid: Optional[int] = None) -> Dict[str, float]:
    """
    Caption the grader's validation images with the submitted model, built
    by the submission's own CaptioningRNN in a worker (helper.grading), and
    score the captions here.

    Inputs:
    - checkpoint: the submitted checkpoint, read before any of the submission's code ran
    - module: the submission's module
    - options: the grader's options (model_data, model_images, data_cache, bwrap, test_timeout, memory_gb, threads)
    - uid: the sandbox's user

    Returns:
    - the metrics (score_captions); ValueError with the reason when the
      checkpoint is not a model of the grader's data or captioning fails
    """
    try:
        state, config, vocab = checkpoint["model"], dict(checkpoint["model_config"]), checkpoint["vocab"]
        idx_to_word = list(vocab["idx_to_token"])
        word_to_idx = {str(k): int(v) for k, v in dict(vocab["token_to_idx"]).items()}
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the model lacks {error} (not a model saved by the notebook's training)") from error
    # The grader's own data: the checkpoint's config never chooses a file.
    data = load_data_cached(options.model_data, options.data_cache)
    if idx_to_word != list(data["vocab"]["idx_to_token"]):
        raise ValueError(f"the model has another vocabulary than the grader's data {options.model_data!r}")
    split = validation_split(data, options.model_images)
    worker = Worker(module, bwrap=options.bwrap, timeout=options.time_limit, uid=uid, threads=options.threads,
                    limits=Limits(seconds=options.time_limit, memory_bytes=int(options.memory_gb * (1 << 30))),
                    max_starts=1)
    try:
        model = worker.module().CaptioningRNN(word_to_idx, image_encoder_pretrained=False, **config)
        worker.probe("load_state", model, {str(k): v for k, v in dict(state).items()})  # plain data only
        captions = worker.probe("greedy_captions", model, split["images"])
    except (RemoteError, WorkerLost, TypeError) as error:  # TypeError: a state that is not tensors by name
        raise ValueError(f"captioning with the submitted model failed: {error}") from None
    finally:
        worker.close()
    return score_captions(captions, split["references"], idx_to_word)


def score_captions(captions, references: List[List[str]], idx_to_word: List[str]) -> Dict[str, float]:
    """
    Score the captions the worker sent.

    Returns:
    - {"bleu1".."bleu4", "cider", "exact"}; ValueError when they are not an
      int tensor of word indices with one row per image
    """
    count = len(references)
    if not isinstance(captions, torch.Tensor) or captions.dim() != 2 or len(captions) != count:
        raise ValueError(f"the model's captions are not a (N={count}, T) tensor of word indices")
    if captions.dtype not in (torch.int64, torch.int32) or captions.numel() and (
        captions.min() < 0 or captions.max() >= len(idx_to_word)
    ):
        raise ValueError("the model's captions hold values that are not word indices")
    predictions = [tokenize(t) for t in decode_captions(captions.long(), idx_to_word)]
    metrics = caption_metrics(predictions, references)
    metrics["exact"] = sum(p in refs for p, refs in zip(predictions, references)) / count
    return metrics
