"""
The training loop of the captioning models.

`train_captioner` is the loop of the assignment (AdamW, a learning rate that
decays once per epoch, one loss value per minibatch), made fast for the
hardware at hand:
- on CPU, channels_last memory format and bfloat16 autocast (together about
  2x faster end to end on CPUs with bf16 instructions; see the README's
  benchmark), and the fused AdamW update;
- on CUDA, automatic mixed precision, channels_last, cuDNN autotuning, the
  fused AdamW update and the whole data set held on the device.
Autocast lives here, in the loop; the model itself always computes in the
dtype of its parameters. `fast=False` gives the plain float32 loop.

The pieces are shared with the command-line trainer (helper/train.py):
- `train_epoch` runs one epoch of minibatches; under DistributedDataParallel
  each process takes its share of every global minibatch;
- `epoch_order` gives an epoch's visiting order from (seed, epoch) alone, so
  that all processes, and a resumed run, draw the same order;
- `encode_images` and `swap_image_encoder` train the decoder alone from
  cached encoder features (see `FeatureLookup`), standardised per channel
  (`standardise_features`, undone in the saved model by
  `fold_standardisation`).
"""
import contextlib
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from helper.captioning.parts import model_parts, unwrap_model


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """
    Inputs:
    - device: where training runs

    Returns:
    - the low-precision dtype worth using on that device, or None when
      mixed precision would not help there
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """
    A context in which the forward pass runs in mixed precision.

    Inputs:
    - device: where the computation runs
    - dtype: the low-precision dtype, or None for full precision

    Returns:
    - a context manager
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def mixed_precision(device: torch.device, fast: bool) -> Tuple[Optional[torch.dtype], Optional["torch.amp.GradScaler"]]:
    """
    Inputs:
    - device: where training runs
    - fast: use mixed precision where the hardware gains from it

    Returns a tuple of:
    - amp_dtype: the autocast dtype, or None for float32
    - scaler: a GradScaler when the dtype is float16 (whose small range needs
      loss scaling), else None
    """
    amp_dtype = autocast_dtype(device) if fast else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return amp_dtype, scaler


def prepare_model(model: nn.Module, device: torch.device, fast: bool) -> nn.Module:
    """
    Move the model to the device and, when fast, into channels_last format
    (convolutions over NHWC data are what oneDNN and cuDNN run fastest).

    Inputs:
    - model: the captioning model
    - device: where training runs
    - fast: use the fast memory format and cuDNN autotuning

    Returns:
    - the model (changed in place)
    """
    model.to(device)
    if fast:
        model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
    return model


def epoch_order(num_examples: int, shuffle: bool = True, seed: Optional[int] = None, epoch: int = 0) -> torch.Tensor:
    """
    The order in which one epoch visits the examples.

    Inputs:
    - num_examples: size of the training set
    - shuffle: a random order; otherwise 0, 1, ..., N - 1
    - seed: None draws from torch's global generator (so reset_seed makes it
      repeatable); an int makes the order a function of (seed, epoch) alone,
      the same in every process of a distributed run and after a resume
    - epoch: the epoch's number, used with seed

    Returns:
    - order: int64 (N,)
    """
    if not shuffle:
        return torch.arange(num_examples)
    if seed is None:
        return torch.randperm(num_examples)
    # SeedSequence mixes (seed, epoch) into an unrelated seed, so that
    # (seed, epoch + 1) and (seed + 1, epoch) give unrelated orders.
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(mixed))


def minibatch_indices(num_examples: int, batch_size: int, shuffle: bool = True) -> List[torch.Tensor]:
    """
    Indices of the minibatches of one epoch.

    Inputs:
    - num_examples: size of the training set
    - batch_size: examples per minibatch (the last one may be smaller)
    - shuffle: draw a new random order (from torch's global generator);
      otherwise go in order

    Returns:
    - a list of index tensors, int64 (B,)
    """
    return list(epoch_order(num_examples, shuffle).split(batch_size))


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """
    This process's share of a global minibatch, as a DistributedSampler
    would give it: contiguous pieces whose sizes differ by at most one.

    Inputs:
    - batch: int64 (B,), indices of the global minibatch
    - rank, world_size: this process and the number of processes

    Returns:
    - int64 (B_rank,)
    """
    return batch.tensor_split(world_size)[rank]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    captions: torch.Tensor,
    amp_dtype: Optional[torch.dtype] = None,
    scaler: Optional["torch.amp.GradScaler"] = None,
    loss_scale: float = 1.0,
) -> float:
    """
    One optimisation step on one minibatch.

    Inputs:
    - model: the captioning model, on the device of the data
    - optimizer: its optimizer
    - images: (B, 3, H, W) uint8 or float
    - captions: (B, T + 1) int64
    - amp_dtype: low-precision dtype for autocast, or None
    - scaler: gradient scaler for float16 autocast, or None
    - loss_scale: factor applied to the loss before backpropagation (to
      weight the processes of a distributed run by their share of the batch)

    Returns:
    - the loss of the minibatch (unscaled), a Python float
    """
    if images.shape[0] == 1:
        # The contract covers batches of two or more (a correct solution may
        # squeeze a batch of one away). The loss averages over the batch, so
        # the image twice gives the same loss and gradient.
        images, captions = images.repeat(2, 1, 1, 1), captions.repeat(2, 1)
    with autocast(images.device, amp_dtype):
        loss = model(images, captions)
    optimizer.zero_grad(set_to_none=True)
    scaled = loss * loss_scale if loss_scale != 1.0 else loss
    if scaler is not None:
        scaler.scale(scaled).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        scaled.backward()
        optimizer.step()
    return loss.item()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    image_data: torch.Tensor,
    caption_data: torch.Tensor,
    batch_size: int,
    device: torch.device,
    order: Optional[torch.Tensor] = None,
    amp_dtype: Optional[torch.dtype] = None,
    scaler: Optional["torch.amp.GradScaler"] = None,
    channels_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    bar: Optional[tqdm] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Tuple[List[float], int]:
    """
    One epoch of minibatch steps.

    With world_size > 1 the model is wrapped in DistributedDataParallel and
    every process runs this with the same order: each takes its shard of
    every global minibatch of batch_size examples, and its loss is weighted
    by its share (B_rank * world_size / B), so that DDP's average of the
    gradients is the gradient of the global minibatch's mean loss, as in
    one process. A last minibatch smaller than world_size is skipped (some
    process would get no example).

    Inputs:
    - model: the captioning model (or its DDP wrapper), on device
    - optimizer: its optimizer
    - image_data: (N, 3, H, W), on any device
    - caption_data: int64 (N, T + 1), on any device
    - batch_size: examples per global minibatch
    - device: where the model is
    - order: int64 (N,), the epoch's visiting order; None for 0..N-1
    - amp_dtype, scaler: from mixed_precision
    - channels_last: hand the images to the model in channels_last format
    - rank, world_size: this process and the number of processes
    - start_step: minibatches of this epoch already done (a resumed run)
    - bar: a progress bar counting images, updated by the global minibatch
    - should_stop: called before each step; True ends the epoch early (an
      interrupted run); all processes must give the same answer

    Returns a tuple of:
    - losses: this process's loss of every minibatch it ran, floats
    - next_step: the number of minibatches of the epoch done so far; the
      epoch is complete when it equals len(order) split by batch_size
    """
    if order is None:
        order = torch.arange(image_data.shape[0])
    batches = order.split(batch_size)
    losses = []
    for step in range(start_step, len(batches)):
        if should_stop is not None and should_stop():
            return losses, step
        batch = batches[step]
        if len(batch) < world_size:
            continue
        local = shard(batch, rank, world_size)
        images = image_data[local.to(image_data.device)].to(device, non_blocking=True)
        captions = caption_data[local.to(caption_data.device)].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        share = len(local) * world_size / len(batch)
        losses.append(train_step(model, optimizer, images, captions, amp_dtype, scaler, loss_scale=share))
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update(len(batch))
    return losses, len(batches)


def make_optimizer(model: nn.Module, learning_rate: float, lr_decay: float = 1.0, fused: bool = False):
    """
    AdamW over the trainable parameters, with the learning rate multiplied by
    lr_decay after every epoch.

    Inputs:
    - model: the model
    - learning_rate: initial learning rate
    - lr_decay: per-epoch decay factor
    - fused: update all parameters in one fused kernel (the same algorithm;
      a few per cent faster per step than the default multi-tensor update)

    Returns a tuple of:
    - optimizer: torch.optim.AdamW
    - scheduler: torch.optim.lr_scheduler.LambdaLR, stepped once per epoch
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_decay**epoch)
    return optimizer, scheduler


def train_captioner(
    model: nn.Module,
    image_data: torch.Tensor,
    caption_data: torch.Tensor,
    num_epochs: int = 80,
    batch_size: int = 50,
    learning_rate: float = 5e-3,
    lr_decay: float = 1.0,
    device: str = "cpu",
    fast: bool = True,
    shuffle: bool = True,
    progress: bool = True,
    epoch_callback: Optional[Callable[[int, nn.Module], None]] = None,
) -> Tuple[nn.Module, List[float]]:
    """
    Train a captioning model with AdamW.

    Inputs:
    - model: a CaptioningRNN
    - image_data: training images, (N, 3, H, W) uint8
    - caption_data: their captions, int64 (N, T + 1)
    - num_epochs: passes over the data
    - batch_size: examples per minibatch
    - learning_rate: initial learning rate
    - lr_decay: learning-rate factor applied after every epoch
    - device: torch device name, e.g. "cpu" or "cuda"
    - fast: mixed precision, channels_last and data on the device where the
      hardware gains from them; False is the plain float32 loop
    - shuffle: visit the examples in a new random order every epoch
    - progress: show a progress bar (images, images/s, time left, loss)
    - epoch_callback: called as epoch_callback(epoch, model) after every epoch

    Returns a tuple of:
    - model: the trained model
    - loss_history: the loss of every minibatch, a list of floats
    """
    if image_data.shape[0] != caption_data.shape[0]:
        raise ValueError(
            f"image_data and caption_data must have one row per example; "
            f"got {image_data.shape[0]} images and {caption_data.shape[0]} captions"
        )
    device = torch.device(device)
    model = prepare_model(model, device, fast)
    model.train()
    optimizer, scheduler = make_optimizer(model, learning_rate, lr_decay, fused=fast)
    amp_dtype, scaler = mixed_precision(device, fast)
    if fast and device.type == "cuda":
        # Copying the data once beats copying every minibatch.
        image_data, caption_data = image_data.to(device), caption_data.to(device)

    num_train = image_data.shape[0]
    loss_history = []
    bar = tqdm(total=num_epochs * num_train, unit="img", unit_scale=True, disable=not progress, desc="training")
    for epoch in range(num_epochs):
        bar.set_description(f"epoch {epoch + 1}/{num_epochs}")
        order = epoch_order(num_train, shuffle)
        losses, _ = train_epoch(
            model, optimizer, image_data, caption_data, batch_size, device,
            order=order, amp_dtype=amp_dtype, scaler=scaler, channels_last=fast, bar=bar,
        )
        loss_history.extend(losses)
        scheduler.step()
        if epoch_callback is not None:
            epoch_callback(epoch, model)
    bar.close()
    return model, loss_history


# ---------------------------------------------------------------------------
# Training the decoder alone, from cached encoder features


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


@contextlib.contextmanager
def cached_encoder(model: nn.Module, features: torch.Tensor):
    """
    Inside the with-block the model's encoder is a FeatureLookup over
    features; the original encoder is put back afterwards.

        with cached_encoder(model, features):
            loss = model(index_images(rows), captions)

    Inputs:
    - model: a CaptioningRNN (or a DDP wrapper of one)
    - features: (M, D, Da, Da)

    Yields:
    - the original encoder
    """
    _, original = swap_image_encoder(model, FeatureLookup(features))
    try:
        yield original
    finally:
        swap_image_encoder(model, original)
