"""
Training the decoder alone, from features of a frozen encoder computed once.

A frozen encoder gives every image the same features in every epoch, so
they are computed once (`encode_images`) and looked up instead of running
the CNN (`FeatureLookup`, put in the encoder's place by
`swap_image_encoder`; the model's forward and sample then take index
images, see `index_images`). The table is standardised per channel
(`standardise_features`); `fold_standardisation` puts the standardisation
into the feature projection, so that the trained decoder works on raw
images again, and `unfold_standardisation` undoes that.

helper/captioning/frozen_encoder.py puts these together for the trainer.
"""
from typing import Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm

from helper.captioning.parts import model_parts, unwrap_model
from helper.captioning.steps import autocast


@torch.no_grad()
def encode_images(
    encoder: nn.Module,
    images: torch.Tensor,
    batch_size: int = 100,
    device: torch.device = torch.device("cpu"),
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """
    The encoder's features of a whole set of images, computed once.

    The encoder runs in eval mode (batch norm uses its running statistics,
    so an image's features do not depend on its minibatch) and its mode is
    restored afterwards.

    Inputs:
    - encoder: an ImageEncoder, on device
    - images: (N, 3, H, W) uint8, on any device
    - batch_size: images encoded at once
    - device: where the encoder is
    - amp_dtype: autocast dtype, or None for float32
    - channels_last: hand the images over in channels_last format
    - progress: show a progress bar

    Returns:
    - features: float32 (N, D, Da, Da) on the CPU
    """
    was_training = encoder.training
    encoder.eval()
    chunks = []
    for start in tqdm(range(0, images.shape[0], batch_size), disable=not progress, desc="encoding", unit="batch"):
        batch = images[start : start + batch_size].to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            chunks.append(encoder(batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(chunks)


def standardise_features(features: torch.Tensor, train_rows: torch.Tensor, eps: float = 1e-5):
    """
    Standardise every channel of a feature table to zero mean and unit
    variance over the training images.

    The features of a random (untrained) encoder are much alike for all
    images: a large common part, and small differences between images next
    to it. Standardising removes the common part and scales up the
    differences, so that the decoder sees them from its first step; the
    decoder then learns several times faster and no less well.

    Inputs:
    - features: (M, D, Da, Da), the table of features
    - train_rows: int64 (N,), the rows of the training images (the
      statistics come from these alone)
    - eps: added to the standard deviation, against division by zero

    Returns a tuple of:
    - standardised: (M, D, Da, Da), (features - mean) / std
    - mean, std: (D,), per channel
    """
    train = features[train_rows]
    mean = train.mean(dim=(0, 2, 3))
    std = train.std(dim=(0, 2, 3)) + eps
    standardised = (features - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return standardised, mean, std


def fold_standardisation(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    """
    The weights of a linear layer that gives on raw features what (weight,
    bias) gives on standardised ones:

        W ((x - mean) / std) + b = (W / std) x + (b - (W / std) mean)

    A decoder trained on standardised features (see standardise_features)
    thus becomes an ordinary model of raw images once its feature projection
    is folded, and its checkpoint works with the real encoder. Mean pooling
    over the grid (the "rnn" and "lstm" models) commutes with the per-channel
    standardisation, so the same folding holds for them.

    Inputs:
    - weight: (H, D), bias: (H,), of the feature projection
    - mean, std: (D,), from standardise_features

    Returns a tuple of:
    - weight: (H, D), bias: (H,), for raw features
    """
    folded = weight / std
    return folded, bias - folded @ mean


def unfold_standardisation(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
    """
    The inverse of fold_standardisation: the weights of a linear layer that
    gives on standardised features what (weight, bias) gives on raw ones:

        W x + b = (W std) ((x - mean) / std) + (b + W mean)

    Inputs:
    - weight: (H, D), bias: (H,), for raw features
    - mean, std: (D,), from standardise_features

    Returns a tuple of:
    - weight: (H, D), bias: (H,), for standardised features
    """
    return weight * std, bias + weight @ mean


class FeatureLookup(nn.Module):
    """
    Stands in for a model's ImageEncoder when the encoder is frozen: it
    returns features computed beforehand instead of running the CNN.

    The model's forward and sample still take "images"; here these are
    index images (see `index_images`), which spell the row of the wanted
    features in the table. Because the model hands its images to its
    encoder unchanged (the API's contract), any implementation's forward,
    sample and loss run on the cached features through its public API, and
    minibatches and evaluation subsets are drawn from index images exactly
    as from real ones.

    The table is a plain attribute, not a buffer: it is no parameter or
    state of the model (DDP does not broadcast it, state_dict omits it).
    """

    def __init__(self, features: torch.Tensor):
        """
        Inputs:
        - features: (M, D, Da, Da), the table of features
        """
        super().__init__()
        if len(features) > 2**24:
            raise ValueError(f"index images address at most 2**24 rows; got {len(features)} features")
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Inputs:
        - images: uint8 (B, 3, h, w) index images

        Returns:
        - features: (B, D, Da, Da), on the images' device
        """
        flat = images.reshape(images.shape[0], 3, -1)
        if images.dtype != torch.uint8 or not torch.equal(flat.amin(dim=2), flat.amax(dim=2)):
            raise ValueError(
                "FeatureLookup expects uint8 index images (see index_images); the model changed its "
                "images before handing them to its encoder, which cached features cannot support"
            )
        digits = flat[:, :, 0].long().cpu()
        rows = digits[:, 0] + 256 * digits[:, 1] + 65536 * digits[:, 2]
        if rows.max() >= len(self.features):
            raise ValueError(f"index images point at row {int(rows.max())} of a table of {len(self.features)} features")
        return self.features[rows].to(images.device)


def index_images(rows: torch.Tensor, size: int = 32) -> torch.Tensor:
    """
    The stand-in images of FeatureLookup: image i spells rows[i] in base
    256, one digit per colour channel (every pixel of a channel alike).
    They are an expanded view, so any number of them takes no memory; a
    subset (images[idx]) takes what real uint8 images of that size take.

    Inputs:
    - rows: int64 (N,), rows of the feature table, below 2**24
    - size: side of the images; 32 at least (the API rejects smaller
      images), or the real images' side where the size matters (the
      grounding score reads the image size from the images)

    Returns:
    - uint8 (N, 3, size, size)
    """
    if len(rows) and (rows.min() < 0 or rows.max() >= 2**24):
        raise ValueError(f"index images hold rows in [0, 2**24); got rows in [{int(rows.min())}, {int(rows.max())}]")
    digits = torch.stack([(rows >> shift) & 255 for shift in (0, 8, 16)], dim=1).to(torch.uint8)  # (N, 3)
    return digits.view(-1, 3, 1, 1).expand(-1, 3, size, size)


def swap_image_encoder(model: nn.Module, replacement: nn.Module) -> Tuple[str, nn.Module]:
    """
    Put replacement in the place of the model's ImageEncoder (found by its
    type, whatever the attribute is called).

    Inputs:
    - model: a CaptioningRNN (or a DDP wrapper of one)
    - replacement: the module to put in, e.g. a FeatureLookup, or the
      original encoder to put back

    Returns a tuple of:
    - name: the dotted name of the encoder inside the model
    - the module that was there before
    """
    model = unwrap_model(model)
    current = _current_encoder(model)
    name = next(n for n, m in model.named_modules() if m is current)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, replacement)
    return name, current


def _current_encoder(model: nn.Module) -> nn.Module:
    """The model's ImageEncoder, or the FeatureLookup that replaces it."""
    lookups = [m for m in model.modules() if isinstance(m, FeatureLookup)]
    if lookups:
        return lookups[0]
    return model_parts(model).encoder
