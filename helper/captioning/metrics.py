"""
Caption metrics: BLEU-1..4 and CIDEr-D over all references of each image,
and attention grounding on the "shapes" data set.

BLEU and CIDEr-D come from pycocoevalcap, the reference implementation of
the COCO caption evaluation; only its pure-Python scorers are used:
- `Bleu(4)` is the COCO server's BLEU: corpus-level n-gram precisions with
  clipped counts, and the brevity penalty against the reference closest in
  length to each candidate.
- `Cider()` is CIDEr-D, the variant that the COCO server reports as "CIDEr"
  (checked in its source, pycocoevalcap/cider/cider_scorer.py): tf-idf
  n-gram vectors for n = 1..4, candidate counts clipped at the reference's
  (`min(vec_hyp, vec_ref)`), a gaussian length penalty with sigma = 6, the
  mean over n and over references, times 10.

COCO's tokenizer (PTBTokenizer) needs Java; `tokenize` stands in for it in
Python: lower case, no punctuation, no <START>/<END>/<NULL>.

CIDEr's idf weights come from the references of the images being scored, so
a score depends on the whole set: a single image always scores 0 (every
n-gram occurs in "all" images), and scores over small or synthetic sets are
not comparable with published COCO numbers.
"""
import math
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from helper.captioning.decoding import decode_captions, generate_captions
from helper.captioning.parts import unwrap_model
from helper.data.format import references_by_image

METRIC_NAMES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider")
# What the commands report: the scores above, the share of exact captions
# (exact_match) and, for attention models on "shapes", the grounding score.
REPORTED_METRICS = METRIC_NAMES + ("exact", "grounding")
# The selection of a one-line progress report.
HEADLINE_METRICS = ("bleu1", "bleu4", "cider", "exact", "grounding")
_SPECIAL_TOKENS = re.compile(r"<(start|end|null)>")
_NOT_A_WORD = re.compile(r"[^0-9a-z\s]+")


# ---------------------------------------------------------------------------
# BLEU and CIDEr-D


def tokenize(caption: str) -> str:
    """
    Normalise a caption for scoring, in place of COCO's PTBTokenizer: lower
    case; <START>, <END> and <NULL> removed; every character that is not a
    letter, a digit or a space replaced by a space ("man's" -> "man s");
    words separated by single spaces. (<UNK> becomes the word "unk".)

    Inputs:
    - caption: a string

    Returns:
    - the normalised string
    """
    text = _SPECIAL_TOKENS.sub(" ", caption.lower())
    return " ".join(_NOT_A_WORD.sub(" ", text).split())


def _as_dicts(predictions, references) -> Tuple[Dict, Dict]:
    """
    Both inputs as dicts keyed alike: lists are keyed by position.
    ValueError when they do not match up.
    """
    if isinstance(predictions, Mapping) != isinstance(references, Mapping):
        raise ValueError(
            f"predictions and references must both be lists (aligned by position) or both dicts "
            f"(keyed by image); got {type(predictions).__name__} and {type(references).__name__}"
        )
    if not isinstance(predictions, Mapping):
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} lists of references")
        predictions, references = dict(enumerate(predictions)), dict(enumerate(references))
    if set(predictions) != set(references):
        missing = sorted(set(predictions) ^ set(references), key=str)[:5]
        raise ValueError(f"predictions and references must have the same keys; these are in only one: {missing}")
    if not predictions:
        raise ValueError("no predictions to score")
    for key, value in predictions.items():
        if not isinstance(value, str):
            raise ValueError(f"prediction {key!r} must be a string; got {type(value).__name__}")
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(f"references of {key!r} must be a non-empty list of strings; got {refs!r:.100}")
    return predictions, references


def caption_metrics(
    predictions: Union[Sequence[str], Mapping[object, str]],
    references: Union[Sequence[Sequence[str]], Mapping[object, Sequence[str]]],
) -> Dict[str, float]:
    """
    BLEU-1..4 and CIDEr-D of generated captions against their references,
    with pycocoevalcap's scorers (see the module docstring).

    Inputs:
    - predictions: one caption per image, a list of strings, or a dict
      image id -> string
    - references: the reference captions of each image, a list (aligned with
      predictions) of lists of strings, or a dict image id -> list of strings

    Captions are normalised with `tokenize` first, so special tokens and
    punctuation do not count.

    Returns:
    - {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}: floats; BLEU in [0, 1],
      CIDEr-D in [0, 10]
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    predictions, references = _as_dicts(predictions, references)
    res = {key: [tokenize(caption)] for key, caption in predictions.items()}
    gts = {key: [tokenize(caption) for caption in references[key]] for key in predictions}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    metrics = {f"bleu{n}": float(score) for n, score in enumerate(bleu, start=1)}
    metrics["cider"] = float(cider)
    return metrics


# ---------------------------------------------------------------------------
# Attention grounding


def _peak_cells(attn_weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Inputs:
    - attn_weights: (..., Dh, Dw)

    Returns:
    - rows, cols: int64 (...), the grid cell of each map's maximum
    """
    Dh, Dw = attn_weights.shape[-2:]
    peak = attn_weights.reshape(*attn_weights.shape[:-2], Dh * Dw).argmax(dim=-1)
    return peak // Dw, peak % Dw


def grounding_hits(
    attn_weights: torch.Tensor,
    word_objects: torch.Tensor,
    boxes: torch.Tensor,
    image_size: Union[int, Tuple[int, int]] = 112,
    min_fraction: float = 0.2,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Whether the attention of each object-naming word peaks on its object.

    The image is split into the Dh x Dw grid of the attention maps (cells of
    image_size / Da pixels: 28x28 for 112x112 images and a 4x4 grid). A word
    is a hit when the cell of its attention map's maximum holds at least
    min_fraction of the area of the named object's box. With objects of
    22-42 pixels on 28-pixel cells an object usually spreads over 2 to 4
    cells; the default 0.2 accepts any cell with a fair share of the object
    and rejects cells that only graze its edge (requiring the cell centre
    inside the box would miss small objects that contain no cell centre).
    The cell holding the most of a box holds at least a quarter of it, so a
    peak there always hits; on "shapes" validation data a peak cell drawn
    at random hits about 16% of the time.

    Inputs:
    - attn_weights: (N, T, Dh, Dw), the attention behind each generated word
    - word_objects: int64 (N, T), the object each generated word names (an
      index into boxes[n]), or -1 for words that name none
    - boxes: (N, max_objects, 4), (x0, y0, x1, y1) in pixels, x1 and y1
      exclusive
    - image_size: the images' side, or (height, width), in pixels
    - min_fraction: in (0, 1], the share of the box the peak cell must hold

    Returns a tuple of:
    - hits: bool (N, T)
    - counted: bool (N, T), the words that name an object (word_objects >= 0)
    """
    if attn_weights.dim() != 4 or word_objects.shape != attn_weights.shape[:2]:
        raise ValueError(
            f"attn_weights must be (N, T, Da, Da) and word_objects (N, T); "
            f"got {tuple(attn_weights.shape)} and {tuple(word_objects.shape)}"
        )
    if boxes.dim() != 3 or boxes.shape[0] != attn_weights.shape[0] or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be (N, max_objects, 4) with N = {attn_weights.shape[0]}; got {tuple(boxes.shape)}")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1]; got {min_fraction}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    word_objects, boxes = word_objects.cpu().long(), boxes.cpu().float()
    counted = word_objects >= 0
    if counted.any() and word_objects.max() >= boxes.shape[1]:
        raise ValueError(f"word_objects names object {int(word_objects.max())}; boxes has {boxes.shape[1]} per image")

    # The box of the named object, (N, T, 4); words naming none get box 0 (masked out below).
    named = boxes.gather(1, word_objects.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4))
    if (counted & (named[..., 2] <= named[..., 0])).any() or (counted & (named[..., 3] <= named[..., 1])).any():
        raise ValueError("a word names an object whose box is empty or absent (padding -1)")

    rows, cols = _peak_cells(attn_weights.cpu())
    cell_h, cell_w = height / attn_weights.shape[2], width / attn_weights.shape[3]
    overlap_w = (torch.minimum(named[..., 2], (cols + 1) * cell_w) - torch.maximum(named[..., 0], cols * cell_w)).clamp(min=0)
    overlap_h = (torch.minimum(named[..., 3], (rows + 1) * cell_h) - torch.maximum(named[..., 1], rows * cell_h)).clamp(min=0)
    box_area = (named[..., 2] - named[..., 0]) * (named[..., 3] - named[..., 1])
    hits = counted & (overlap_w * overlap_h >= min_fraction * box_area)
    return hits, counted


def grounding_score(
    attn_weights: torch.Tensor,
    word_objects: torch.Tensor,
    boxes: torch.Tensor,
    image_size: Union[int, Tuple[int, int]] = 112,
    min_fraction: float = 0.2,
) -> float:
    """
    The fraction of object-naming generated words whose attention peak falls
    on the named object (see grounding_hits for the exact rule).

    Inputs: as grounding_hits.

    Returns:
    - the fraction in [0, 1]; nan when no word names an object
    """
    hits, counted = grounding_hits(attn_weights, word_objects, boxes, image_size, min_fraction)
    if not counted.any():
        return math.nan
    return hits.sum().item() / counted.sum().item()


def resolve_word_objects(
    tokens: torch.Tensor,
    ref_captions: torch.Tensor,
    ref_word_objects: torch.Tensor,
    end: Optional[int] = None,
) -> torch.Tensor:
    """
    Which object each word of a generated caption names, learnt from the
    image's reference captions and their word -> object data.

    A word names object k when, in the references of the image, it only
    ever names k ("red" when one object is red). A word that names several
    objects there ("small" with two small objects) is settled by its
    phrase: a run of consecutive object-naming words (such as "small red
    circle"; articles and relation words end a run). When the words of the
    run that name a single object all agree on it, every word of the run
    that can name that object names it. Words that name no object of this
    image (a colour it does not have, "above", "a") get -1, as do words
    whose object stays ambiguous.

    Inputs:
    - tokens: int64 (T,), a generated caption (first element = first word);
      everything from the first `end` on gets -1
    - ref_captions: int64 (R, L), the image's reference captions
    - ref_word_objects: int64 (R, L), aligned with ref_captions (-1: none)
    - end: index of <END>, or None

    Returns:
    - word_objects: int64 (T,)
    """
    if ref_captions.shape != ref_word_objects.shape or ref_captions.dim() != 2:
        raise ValueError(
            f"ref_captions and ref_word_objects must both be (R, L); "
            f"got {tuple(ref_captions.shape)} and {tuple(ref_word_objects.shape)}"
        )
    names: Dict[int, set] = {}
    for word, obj in zip(ref_captions.flatten().tolist(), ref_word_objects.flatten().tolist()):
        if obj >= 0:
            names.setdefault(word, set()).add(obj)

    words = tokens.tolist()
    if end is not None and end in words:
        words = words[: words.index(end)]
    result = [-1] * len(tokens)
    t = 0
    while t < len(words):
        if words[t] not in names:
            t += 1
            continue
        run_end = t
        while run_end < len(words) and words[run_end] in names:
            run_end += 1
        run = range(t, run_end)
        sure = {next(iter(names[words[i]])) for i in run if len(names[words[i]]) == 1}
        for i in run:
            options = names[words[i]]
            if len(sure) == 1 and sure <= options:
                result[i] = next(iter(sure))
            elif len(options) == 1:
                result[i] = next(iter(options))
        t = run_end
    return torch.tensor(result, dtype=torch.int64)


# ---------------------------------------------------------------------------
# Evaluating a model


def _to_text(captions: torch.Tensor, idx_to_word) -> List[str]:
    """Word indices (N, T) to tokenized strings, stopping at each <END>."""
    return [tokenize(text) for text in decode_captions(captions, idx_to_word)]


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def evaluate_captions(
    model: nn.Module,
    images: torch.Tensor,
    captions: torch.Tensor,
    image_ids: torch.Tensor,
    idx_to_word: Union[Sequence[str], Mapping[int, str]],
    batch_size: int = 100,
    beam_size: int = 1,
    max_length: Optional[int] = None,
    length_penalty: float = 0.0,
    device: Optional[Union[str, torch.device]] = None,
    boxes: Optional[torch.Tensor] = None,
    word_objects: Optional[torch.Tensor] = None,
) -> Dict[str, object]:
    """
    Caption every distinct image once and score the captions against all
    references of the image.

    Rows with the same image id show the same image: their captions are that
    image's references, and the image is captioned once (greedy
    `model.sample` for beam_size 1, else `beam_search`), batch_size images
    at a time. The model is put in eval mode for the evaluation and given
    back in the mode it came in.

    Inputs:
    - model: a CaptioningRNN
    - images: uint8 (N, 3, H, W), one per caption row
    - captions: int64 (N, L), reference captions (<START> ... <END> <NULL>...)
    - image_ids: int64 (N,)
    - idx_to_word: index -> word, a list or dict
    - batch_size: images captioned at once
    - beam_size: 1 for greedy decoding, K > 1 for beam search
    - max_length: words to generate at most; None for L - 1 (room for the
      longest reference's words and its <END>)
    - length_penalty: alpha of beam search
    - device: where to caption; None for the model's device
    - boxes: float32 (N, max_objects, 4) and word_objects: int64 (N, L), the
      grounding data of "shapes" (see helper.data); with both given and an
      attention model, metrics["grounding"] is the grounding score

    Returns a dict, with one entry per distinct image in order of first
    appearance:
    - "metrics": {"bleu1", ..., "bleu4", "cider"}, and "grounding" when it
      was computed (nan when no generated word names an object)
    - "image_ids": list of M image ids
    - "predictions": {image id: generated caption}, tokenized
    - "references": {image id: list of reference captions}, tokenized
    - "captions": int64 (M, max_length), the generated word indices
    - "attn_weights": (M, max_length, Da, Da) for "attn", else None
    """
    if images.dim() != 4 or captions.dim() != 2 or len(images) != len(captions) or len(images) != len(image_ids):
        raise ValueError(
            f"images (N, 3, H, W), captions (N, L) and image_ids (N,) must have the same N; "
            f"got {tuple(images.shape)}, {tuple(captions.shape)}, {tuple(image_ids.shape)}"
        )
    if (boxes is None) != (word_objects is None):
        raise ValueError("boxes and word_objects go together: give both or neither")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    max_length = captions.shape[1] - 1 if max_length is None else max_length
    device = torch.device(device) if device is not None else _model_device(model)

    first_rows, reference_rows = references_by_image(image_ids, captions)
    unique_images = images[first_rows]
    inner = unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        generated, attention = [], []
        for start in range(0, len(first_rows), batch_size):
            batch = unique_images[start : start + batch_size].to(device)
            batch_captions, batch_attention = generate_captions(inner, batch, beam_size, max_length, length_penalty)
            generated.append(batch_captions.cpu())
            if batch_attention is not None:
                attention.append(batch_attention)
    finally:
        inner.train(was_training)
    generated = torch.cat(generated)
    attn_weights = torch.cat(attention) if attention else None

    ids = image_ids[first_rows].tolist()
    predictions = dict(zip(ids, _to_text(generated, idx_to_word)))
    references = {i: _to_text(refs, idx_to_word) for i, refs in zip(ids, reference_rows)}
    metrics = caption_metrics(predictions, references)

    if boxes is not None and attn_weights is not None:
        _, object_rows = references_by_image(image_ids, word_objects)
        end = _end_index(idx_to_word)
        resolved = torch.stack(
            [resolve_word_objects(g, refs, objs, end) for g, refs, objs in zip(generated, reference_rows, object_rows)]
        )
        metrics["grounding"] = grounding_score(attn_weights, resolved, boxes[first_rows], tuple(images.shape[2:]))
    return {
        "metrics": metrics,
        "image_ids": ids,
        "predictions": predictions,
        "references": references,
        "captions": generated,
        "attn_weights": attn_weights,
    }


def exact_match(result: dict) -> float:
    """
    The fraction of images whose generated caption equals one of their
    references word for word: on "shapes", the share captioned right.

    Inputs:
    - result: from helper.captioning.metrics.evaluate_captions

    Returns:
    - a float in [0, 1]
    """
    predictions, references = result["predictions"], result["references"]
    return sum(predictions[i] in references[i] for i in predictions) / len(predictions)


def _end_index(idx_to_word) -> Optional[int]:
    """The index of <END> in an index -> word list or dict, or None."""
    items = idx_to_word.items() if isinstance(idx_to_word, Mapping) else enumerate(idx_to_word)
    return next((index for index, word in items if word == "<END>"), None)


def evaluate_split(model: nn.Module, data: dict, split: str = "val", **options) -> Dict[str, object]:
    """
    evaluate_captions on one split of a data dict of the common format
    (helper.data), with its grounding data when it has any.

    Inputs:
    - model: a CaptioningRNN
    - data: from helper.data.load_dataset
    - split: "train" or "val"
    - options: batch_size, beam_size, max_length, length_penalty, device

    Returns:
    - the dict of evaluate_captions
    """
    key = f"{split}_images"
    if key not in data:
        raise ValueError(f"the data has no split {split!r} (no key {key!r}); it has {sorted(k for k in data if k.endswith('_images'))}")
    return evaluate_captions(
        model,
        data[key],
        data[f"{split}_captions"],
        data[f"{split}_image_ids"],
        data["vocab"]["idx_to_token"],
        boxes=data.get(f"{split}_boxes"),
        word_objects=data.get(f"{split}_word_objects"),
        **options,
    )


def format_metrics(
    metrics: Mapping[str, Optional[float]], names: Optional[Sequence[str]] = None, one_line: bool = False
) -> str:
    """
    Metrics as text, for the commands' messages.

    Inputs:
    - metrics: name -> value; a name missing or None is left out (other
      keys, such as an epoch record's "loss", are shown only when named)
    - names: the metrics to show, in order; None for REPORTED_METRICS,
      then metrics' other keys
    - one_line: "name value name value ..." with 3 decimals; otherwise
      one aligned "name value" line each, with 4 decimals

    Returns:
    - the text
    """
    if names is None:
        names = list(REPORTED_METRICS) + [name for name in metrics if name not in REPORTED_METRICS]
    shown = [name for name in names if metrics.get(name) is not None]
    if one_line:
        return " ".join(f"{name} {metrics[name]:.3f}" for name in shown)
    return "\n".join(f"{name:<10} {metrics[name]:.4f}" for name in shown)
