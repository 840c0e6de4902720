"""
The training loop of the captioning models.

`train_captioner` is the loop of the assignment (AdamW, a learning rate that
decays once per epoch, one loss value per minibatch), made fast for the
hardware at hand (`fast=True`, the default):
- on a CPU, the speed-ups among bfloat16 autocast, channels_last memory
  format and the fused AdamW update that measurably pay on this machine for
  this model, timed once and cached (helper/captioning/fast_path.py; the
  README's benchmark has the figures);
- on CUDA, automatic mixed precision, channels_last, cuDNN autotuning, the
  fused AdamW update and the whole data set held on the device.
`fast=False` gives the plain float32 loop. Either loop runs under
helper.common.utils.reproducible (deterministic kernels, a fixed number of
threads): one seed gives the same run, busy CPU or idle.

The pieces are shared with the command-line trainer (helper/captioning/run.py):
- `setup_training` puts a model on its device with its optimiser, schedule
  and precision;
- `train_epoch` runs one epoch of minibatches (helper/captioning/steps.py
  has the step); under DistributedDataParallel each process takes its share
  of every global minibatch;
- `epoch_order` gives an epoch's visiting order from (seed, epoch) alone, so
  that all processes, and a resumed run, draw the same order.
Training the decoder alone from cached encoder features is in
helper/captioning/features.py.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from helper.captioning.fast_path import PLAIN, FastPath, choose_path
from helper.captioning.steps import make_optimizer, train_step
from helper.common.utils import reproducible


def mixed_precision(device: torch.device, path: FastPath) -> Tuple[Optional[torch.dtype], Optional["torch.amp.GradScaler"]]:
    """
    Inputs:
    - device: where training runs
    - path: the fast path (see helper.captioning.fast_path)

    Returns a tuple of:
    - amp_dtype: the autocast dtype, or None for float32
    - scaler: a GradScaler when the dtype is float16 (whose small range needs
      loss scaling), else None
    """
    amp_dtype = path.amp_dtype
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return amp_dtype, scaler


def prepare_model(model: nn.Module, device: torch.device, path: FastPath) -> nn.Module:
    """
    Move the model to the device and, on the fast path, into channels_last
    format (convolutions over NHWC data are what oneDNN and cuDNN run
    fastest where they do).

    Inputs:
    - model: the captioning model
    - device: where training runs
    - path: the fast path (see helper.captioning.fast_path)

    Returns:
    - the model (changed in place)
    """
    model.to(device)
    if path.channels_last:
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


@dataclass
class TrainingSetup:
    """
    A model ready to train and what its steps need:
    - model: on its device (channels_last when the path says so)
    - optimizer, scheduler: from make_optimizer
    - amp_dtype, scaler: from mixed_precision
    - path: the fast path it takes (see helper.captioning.fast_path)
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp_dtype: Optional[torch.dtype]
    scaler: Optional["torch.amp.GradScaler"]
    path: FastPath = PLAIN


def setup_training(
    model: nn.Module, device: torch.device, learning_rate: float, lr_decay: float, path: FastPath
) -> TrainingSetup:
    """
    Put a model on its device and give it its optimiser, schedule and
    precision, as both train_captioner and the command-line trainer do.

    Inputs:
    - model: the captioning model; parameters that must not train already
      have requires_grad False (the optimiser leaves them out)
    - device: where training runs
    - learning_rate, lr_decay: of make_optimizer
    - path: the fast path to take (helper.captioning.fast_path.choose_path;
      PLAIN for the plain float32 loop)

    Returns:
    - the TrainingSetup (the model is changed in place)
    """
    prepare_model(model, device, path)
    optimizer, scheduler = make_optimizer(model, learning_rate, lr_decay, fused=path.fused)
    amp_dtype, scaler = mixed_precision(device, path)
    return TrainingSetup(model, optimizer, scheduler, amp_dtype, scaler, path)


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
    threads: Optional[int] = None,
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
    - fast: the fast path of this machine (mixed precision, channels_last,
      fused AdamW where they measurably gain: helper.captioning.fast_path)
      and the data on the device on CUDA; False is the plain float32 loop
    - shuffle: visit the examples in a new random order every epoch
    - progress: show a progress bar (images, images/s, time left, loss)
    - epoch_callback: called as epoch_callback(epoch, model) after every epoch
    - threads: CPU threads to train with (None: the process's current
      number); one seed and one number of threads give the same run every
      time, busy machine or idle (see helper.common.utils.reproducible)

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
    num_train = image_data.shape[0]
    loss_history = []
    bar = tqdm(total=num_epochs * num_train, unit="img", unit_scale=True, disable=not progress, desc="training")
    with reproducible(device, threads), bar:
        model.train()
        sample = (image_data[:batch_size], caption_data[:batch_size])  # to measure the fast path with
        setup = setup_training(model, device, learning_rate, lr_decay, choose_path(model, device, *sample) if fast else PLAIN)
        if fast and device.type == "cuda":
            # Copying the data once beats copying every minibatch.
            image_data, caption_data = image_data.to(device), caption_data.to(device)
        for epoch in range(num_epochs):
            bar.set_description(f"epoch {epoch + 1}/{num_epochs}")
            order = epoch_order(num_train, shuffle)
            losses, _ = train_epoch(
                model, setup.optimizer, image_data, caption_data, batch_size, device,
                order=order, amp_dtype=setup.amp_dtype, scaler=setup.scaler, channels_last=setup.path.channels_last, bar=bar,
            )
            loss_history.extend(losses)
            setup.scheduler.step()
            if epoch_callback is not None:
                epoch_callback(epoch, model)
    return model, loss_history
