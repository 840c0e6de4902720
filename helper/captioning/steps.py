"""
One optimisation step of a captioning model, and what it runs with: the
AdamW optimiser with its per-epoch decay, and autocast (mixed precision:
the forward pass in a low-precision dtype where the device has kernels for
it; the model itself always computes in the dtype of its parameters).
Shared by the training loops (helper/captioning/training.py) and the
measurement that chooses the fast path (helper/captioning/fast_path.py).
"""
import contextlib
from typing import Optional

import torch
from torch import nn


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """
    Inputs:
    - device: where training runs

    Returns:
    - the low-precision dtype the device has kernels for (bfloat16 on a CPU
      where oneDNN has bfloat16 kernels), or None
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """A context in which the forward pass runs in mixed precision (dtype None: full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
