"""
The training loop of the captioning models.

`train_captioner` is the loop of the assignment (AdamW, a learning rate that
decays once per epoch, one loss value per minibatch), made fast for the
hardware at hand:
- on CPU, channels_last memory format and bfloat16 autocast (these make the
  encoder's convolutions several times faster on CPUs with bf16 units);
- on CUDA, automatic mixed precision, channels_last, cuDNN autotuning and
  the whole data set held on the device.
Autocast lives here, in the loop; the model itself always computes in the
dtype of its parameters. `fast=False` gives the plain float32 loop.
"""
import contextlib
import math
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from tqdm.auto import tqdm


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


def minibatch_indices(num_examples: int, batch_size: int, shuffle: bool = True) -> Iterator[torch.Tensor]:
    """
    Indices of the minibatches of one epoch.

    Inputs:
    - num_examples: size of the training set
    - batch_size: examples per minibatch (the last one may be smaller)
    - shuffle: draw a new random order (from torch's global generator, so
      reset_seed makes it repeatable); otherwise go in order

    Yields:
    - index tensors, int64 (B,)
    """
    order = torch.randperm(num_examples) if shuffle else torch.arange(num_examples)
    for start in range(0, num_examples, batch_size):
        yield order[start : start + batch_size]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    captions: torch.Tensor,
    amp_dtype: Optional[torch.dtype] = None,
    scaler: Optional["torch.amp.GradScaler"] = None,
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

    Returns:
    - the loss of the minibatch, a Python float
    """
    with autocast(images.device, amp_dtype):
        loss = model(images, captions)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.item()


def make_optimizer(model: nn.Module, learning_rate: float, lr_decay: float = 1.0):
    """
    AdamW over the trainable parameters, with the learning rate multiplied by
    lr_decay after every epoch.

    Inputs:
    - model: the model
    - learning_rate: initial learning rate
    - lr_decay: per-epoch decay factor

    Returns a tuple of:
    - optimizer: torch.optim.AdamW
    - scheduler: torch.optim.lr_scheduler.LambdaLR, stepped once per epoch
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
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
    - progress: show a progress bar
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
    optimizer, scheduler = make_optimizer(model, learning_rate, lr_decay)

    amp_dtype = autocast_dtype(device) if fast else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    if fast and device.type == "cuda":
        # Copying the data once beats copying every minibatch.
        image_data, caption_data = image_data.to(device), caption_data.to(device)

    num_train = image_data.shape[0]
    steps_per_epoch = math.ceil(num_train / batch_size)
    loss_history = []
    bar = tqdm(total=num_epochs * steps_per_epoch, disable=not progress, desc="training")
    for epoch in range(num_epochs):
        for idx in minibatch_indices(num_train, batch_size, shuffle):
            images = image_data[idx.to(image_data.device)].to(device)
            captions = caption_data[idx.to(caption_data.device)].to(device)
            if fast:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = train_step(model, optimizer, images, captions, amp_dtype, scaler)
            loss_history.append(loss)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}")
            bar.update(1)
        scheduler.step()
        if epoch_callback is not None:
            epoch_callback(epoch, model)
    bar.close()
    return model, loss_history
