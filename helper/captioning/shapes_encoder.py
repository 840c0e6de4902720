"""
An encoder pretrained on the built-in "shapes" data: the offline stand-in
for ImageNet weights.

On Colab the encoder starts from ImageNet weights, and a decoder trained on
their frozen features captions well. Offline there are none, so here the
RegNetX-400MF trunk learns what the shapes' captions talk about from labels
the data set already has: for every cell of the encoder's 4x4 grid, the
colour, shape and size of the object that covers it (or none), read from the
objects' boxes and the words that name them. Two heads read the c5 features:

- per cell (a 1x1 convolution): what is in this cell, so that each cell's
  features say what is there (what the attention LSTM looks up);
- from the grid's mean (a linear layer): what is in every cell, so that the
  mean-pooled features say where things are too (all that the RNN and the
  LSTM get to see).

The heads are thrown away; the trunk's weights are cached in the data folder
next to the data set (`shapes-encoder-v1-<digest>.pt`, the digest of the
pretraining's settings and the training images and labels it used) and
checked when read: a file made from other settings or data, or whose weights
do not match their recorded digest, is replaced, never used. Only training
images are used: the caller hands over the training split alone.

    pretrained = pretrained_shapes_encoder(data)                # pretrained once, then read from the cache
    load_trunk(model_parts(model).encoder, pretrained["trunk"])  # into any ImageEncoder of the contract
"""
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from helper.captioning.splits import unique_rows
from helper.common.files import PathLike, atomic_output
from helper.common.utils import reproducible, reset_seed
from helper.data.shapes import COLOUR_NAMES, SHAPE_NAMES, SIZE_NAMES
from helper.data.storage import default_data_dir

FORMAT, FORMAT_VERSION = "shapes-encoder", 1
ATTRIBUTES = {"colour": COLOUR_NAMES, "shape": SHAPE_NAMES, "size": SIZE_NAMES}
STRIDE = 32  # pixels per cell of the c5 grid
MIN_COVER = 100  # pixels of an object's box a cell must hold to be labelled with it


@dataclass(frozen=True)
class PretrainConfig:
    """
    How the encoder is pretrained (all of it goes into the cache's digest):
    - images: the first N distinct training images
    - epochs, batch_size, learning_rate: AdamW with a one-cycle schedule
    - seed: of the heads' weights, the trunk's and the order of the images
    - threads: CPU threads (fixed, so that the weights are the same on every run)
    """

    images: int = 8000
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 6e-3
    seed: int = 0
    threads: int = 2


# ---------------------------------------------------------------------------
# Labels


def object_attributes(captions: torch.Tensor, word_objects: torch.Tensor, vocab: dict) -> torch.Tensor:
    """
    What each object is, read from the words that name it.

    Inputs:
    - captions: int64 (N, T), one caption per image that names every object
    - word_objects: int64 (N, T), the object each token names, or -1
    - vocab: the data's vocabulary

    Returns:
    - attributes: int64 (N, K, 3), the index of each object's colour, shape
      and size in ATTRIBUTES' names; -1 for absent objects
    """
    token_to_idx = vocab["token_to_idx"]
    num_objects = int(word_objects.max()) + 1
    columns = []
    for names in ATTRIBUTES.values():
        lookup = torch.full((len(vocab["idx_to_token"]),), -1, dtype=torch.int64)  # token -> attribute value
        for value, name in enumerate(names):
            lookup[token_to_idx[name]] = value
        values = lookup[captions]  # (N, T)
        per_object = [torch.where(word_objects == k, values, -1).amax(dim=1) for k in range(num_objects)]
        columns.append(torch.stack(per_object, dim=1))
    return torch.stack(columns, dim=2)


def cell_labels(boxes: torch.Tensor, attributes: torch.Tensor, image_size: int) -> torch.Tensor:
    """
    The label of every cell of the c5 grid: the attributes of the object
    whose box covers most of the cell, if it covers at least MIN_COVER
    pixels of it.

    Inputs:
    - boxes: float32 (N, K, 4), (x0, y0, x1, y1) of each object, -1 for absent ones
    - attributes: int64 (N, K, 3), from object_attributes
    - image_size: the images' side in pixels

    Returns:
    - labels: int64 (N, 3, G, G), G the side of the c5 grid (4 for 112x112
      images: the RegNet's stride of 32, rounded up): 0 for no object, else
      the attribute's index + 1
    """
    grid = math.ceil(image_size / STRIDE)
    side = image_size / grid  # 28 pixels for 112x112 images
    starts = torch.arange(grid, dtype=torch.float32) * side

    def overlap(low, high):  # (N, K) -> (N, K, G): pixels of [low, high) inside each cell
        return (torch.minimum(high[..., None], starts + side) - torch.maximum(low[..., None], starts)).clamp(min=0)

    x0, y0, x1, y1 = boxes.unbind(dim=-1)
    cover = overlap(y0, y1)[..., :, None] * overlap(x0, x1)[..., None, :]  # (N, K, G, G)
    most, winner = cover.max(dim=1)  # (N, G, G)
    chosen = attributes.gather(1, winner.flatten(1)[..., None].expand(-1, -1, 3))  # (N, G*G, 3)
    labels = torch.where(most.flatten(1)[..., None] >= MIN_COVER, chosen + 1, 0)
    return labels.transpose(1, 2).reshape(-1, 3, grid, grid)


def training_labels(data: dict, num_images: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    The first num_images distinct training images and their cell labels.

    Inputs:
    - data: a shapes data dict (with train_boxes and train_word_objects);
      only its train_ keys are read
    - num_images: how many images (all of them when there are fewer)

    Returns a tuple of:
    - images: uint8 (M, 3, S, S)
    - labels: int64 (M, 3, G, G), from cell_labels
    """
    if "train_boxes" not in data:
        raise ValueError("the shapes encoder is pretrained on a data set with object boxes (shapes); this one has none")
    first, _ = unique_rows(data["train_image_ids"])
    first = first[:num_images]
    attributes = object_attributes(data["train_captions"][first], data["train_word_objects"][first], data["vocab"])
    images = data["train_images"][first]
    return images, cell_labels(data["train_boxes"][first], attributes, images.shape[-1])


# ---------------------------------------------------------------------------
# Pretraining


class CellHeads(nn.Module):
    """Scores of each cell's colour, shape and size, from its own features and from the grid's mean."""

    def __init__(self, channels: int, grid: int):
        super().__init__()
        self.classes = [len(names) + 1 for names in ATTRIBUTES.values()]  # + 1: no object
        self.grid = grid
        self.per_cell = nn.Conv2d(channels, sum(self.classes), kernel_size=1)
        self.pooled = nn.Linear(channels, sum(self.classes) * grid * grid)

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Inputs:
        - features: (N, C, G, G)

        Returns a tuple of two (N, sum(classes), G, G) scores: per cell, and from the mean
        """
        pooled = self.pooled(features.mean(dim=(2, 3))).view(len(features), -1, self.grid, self.grid)
        return self.per_cell(features), pooled


def cell_loss(scores: torch.Tensor, labels: torch.Tensor, classes: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Inputs:
    - scores: (N, sum(classes), G, G); labels: int64 (N, 3, G, G)
    - classes: the number of classes of each attribute

    Returns a tuple of:
    - the summed cross-entropy of the three attributes, averaged over cells
    - correct: bool (N, G, G), all three attributes right
    """
    loss, correct = 0.0, torch.ones(labels[:, 0].shape, dtype=torch.bool, device=labels.device)
    for attribute, block in enumerate(scores.split(classes, dim=1)):
        loss = loss + F.cross_entropy(block.float(), labels[:, attribute])
        correct &= block.argmax(dim=1) == labels[:, attribute]
    return loss, correct


def pretrain_trunk(
    encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: PretrainConfig,
    device: torch.device, progress: bool = True,
) -> dict:
    """
    Train the encoder with CellHeads on the images' cell labels, in place.

    Inputs:
    - encoder: an ImageEncoder of random weights, on the CPU
    - images: uint8 (M, 3, S, S); labels: int64 (M, 3, G, G)
    - config: the pretraining's settings
    - device: where to train
    - progress: show a progress bar

    Returns:
    - report: seconds, steps, and the last 50 steps' mean loss and share of
      cells right (per cell and from the mean)
    """
    reset_seed(config.seed)
    heads = CellHeads(encoder.out_channels, labels.shape[-1])
    encoder.to(device, memory_format=torch.channels_last).train()
    heads.to(device)
    steps = config.epochs * math.ceil(len(images) / config.batch_size)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=steps, pct_start=0.2)
    order = torch.Generator().manual_seed(config.seed)
    history, start = [], time.perf_counter()
    bar = tqdm(total=steps, desc="pretraining the encoder", disable=not progress)
    with reproducible(device, config.threads), bar:
        for _ in range(config.epochs):
            for batch in torch.randperm(len(images), generator=order).split(config.batch_size):
                x = images[batch].to(device).contiguous(memory_format=torch.channels_last)
                y = labels[batch].to(device)
                per_cell, pooled = heads(encoder(x))
                cell, cell_right = cell_loss(per_cell, y, heads.classes)
                mean, mean_right = cell_loss(pooled, y, heads.classes)
                optimizer.zero_grad(set_to_none=True)
                (cell + mean).backward()
                optimizer.step()
                schedule.step()
                right = (cell_right.float().mean().item(), mean_right.float().mean().item())
                history.append(((cell + mean).item(), *right))
                bar.update()
                bar.set_postfix(loss=f"{history[-1][0]:.3f}")
    encoder.to("cpu", memory_format=torch.contiguous_format).eval()
    last = torch.tensor(history[-50:]).mean(dim=0).tolist()
    return {"seconds": time.perf_counter() - start, "steps": steps, "loss": last[0],
            "cells_right": last[1], "cells_right_from_mean": last[2]}


# ---------------------------------------------------------------------------
# The trunk's weights: taken out of an encoder, put into another, cached


def _trunks(encoder: nn.Module) -> List[nn.Module]:
    """The RegNet trunks inside an encoder: its modules with a stem and a trunk_output (one, or two sharing weights)."""
    found = [m for _, m in encoder.named_modules() if hasattr(m, "stem") and hasattr(m, "trunk_output")]
    if not found:
        raise ValueError(f"{type(encoder).__name__} holds no RegNet trunk (a module with .stem and .trunk_output)")
    return found


def trunk_state(encoder: nn.Module) -> Dict[str, torch.Tensor]:
    """The RegNet trunk's weights and batch-norm statistics ("stem.*", "trunk_output.*"), on the CPU."""
    trunk = _trunks(encoder)[0]
    state = {f"stem.{k}": v for k, v in trunk.stem.state_dict().items()}
    state.update({f"trunk_output.{k}": v for k, v in trunk.trunk_output.state_dict().items()})
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_trunk(encoder: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """
    Put trunk weights (from trunk_state) into every RegNet trunk of an
    encoder, whatever its attribute names (the contract's ImageEncoder may
    keep the torchvision model and its feature extractor side by side).
    """
    for trunk in _trunks(encoder):
        for part in ("stem", "trunk_output"):
            prefix = f"{part}."
            getattr(trunk, part).load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def _digest(*parts) -> str:
    """sha256 over strings and tensors, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            digest.update(str((part.dtype, tuple(part.shape))).encode())
            digest.update(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(str(part).encode())
    return digest.hexdigest()


def weights_digest(state: Dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and values."""
    return _digest(*[item for name in sorted(state) for item in (name, state[name])])


def _read_cache(path: Path, data_digest: str) -> Optional[dict]:
    """The cached pretraining in path if it is complete, of this data and settings, and its weights check; else None."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(cached, dict) or (cached.get("format"), cached.get("format_version")) != (FORMAT, FORMAT_VERSION):
            raise ValueError("not a shapes-encoder file of this version")
        if cached.get("data_digest") != data_digest:
            raise ValueError("made from other settings or other training images")
        if weights_digest(cached["trunk"]) != cached.get("weights_digest"):
            raise ValueError("its weights do not match their recorded digest (damaged)")
        return cached
    except Exception as error:  # a damaged or stale file is replaced, never used
        warnings.warn(f"Not using the cached encoder {path}: {error}. Pretraining it again.")
        return None


def pretrained_shapes_encoder(
    data: dict, config: Optional[PretrainConfig] = None, data_dir: Optional[PathLike] = None,
    device: torch.device = torch.device("cpu"), progress: bool = True, module=None,
) -> dict:
    """
    An encoder pretrained on the shapes data's training images: read from
    the cache when it was made from the same settings and images, else
    pretrained (minutes on a CPU) and cached.

    Inputs:
    - data: a shapes data dict; only its training split is read
    - config: the pretraining's settings; None for PretrainConfig()
    - data_dir: the cache's folder; None for default_data_dir()
    - device: where to pretrain
    - progress: show a progress bar (a line on stderr says when it pretrains, either way)
    - module: the captioning module whose ImageEncoder to train (None: rnn_lstm_captioning)

    Returns:
    - a dict with "trunk": the trunk's state (see trunk_state), for
      load_trunk; "report": what pretrain_trunk measured; "config", "path"
    """
    config = config or PretrainConfig()
    images, labels = training_labels(data, config.images)
    data_digest = _digest(FORMAT_VERSION, json.dumps(asdict(config), sort_keys=True), images, labels)
    path = Path(data_dir or default_data_dir()) / f"{FORMAT}-v{FORMAT_VERSION}-{data_digest[:16]}.pt"
    if path.is_file():
        cached = _read_cache(path, data_digest)
        if cached is not None:
            return {**cached, "path": str(path)}
    if module is None:
        import rnn_lstm_captioning as module
    # Said even without a progress bar: it takes minutes, once.
    print(f"Pretraining the encoder on {len(images)} training images of shapes (once; cached in {path})",
          file=sys.stderr)
    reset_seed(config.seed)
    encoder = module.ImageEncoder(pretrained=False, verbose=False)
    report = pretrain_trunk(encoder, images, labels, config, device, progress)
    trunk = trunk_state(encoder)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": asdict(config), "data_digest": data_digest,
              "trunk": trunk, "weights_digest": weights_digest(trunk), "report": report}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(record, tmp)
    print(f"Pretrained in {report['seconds']:.0f} s: {report['cells_right']:.1%} of cells right "
          f"({report['cells_right_from_mean']:.1%} from the mean)", file=sys.stderr)
    return {**record, "path": str(path)}
