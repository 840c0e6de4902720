"""
Pictures of training runs: sample captions (with attention maps) and loss
curves.

The figures are made with matplotlib's object-oriented API
(matplotlib.figure.Figure, no pyplot), so nothing depends on a display or
changes the notebook's backend: a notebook shows a returned Figure, scripts
pass `path` to write a PNG (atomically).
"""
import textwrap
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from helper.common.files import PathLike, atomic_output

DPI = 100


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    """uint8 or float [0, 1] (3, H, W) -> float (H, W, 3) in [0, 1], for imshow."""
    image = image.detach().cpu()
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float().clamp(0, 1)
    return image.permute(1, 2, 0).numpy()


def upsample_attention(attn_weights: torch.Tensor, height: int, width: int) -> np.ndarray:
    """
    Attention maps blown up to the image's size, smoothly (bilinear), to lay
    over the image.

    Inputs:
    - attn_weights: (T, Da, Da), one map per word
    - height, width: the image's size

    Returns:
    - float (T, height, width), each map scaled to a maximum of 1
    """
    maps = attn_weights.detach().cpu().float().unsqueeze(1)  # (T, 1, Da, Da)
    maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False).squeeze(1)
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).numpy()


def caption_words(caption: str) -> list:
    """The words of a decoded caption, without <START>, <END> and <NULL>."""
    return [w for w in caption.split() if w not in ("<START>", "<END>", "<NULL>")]


def plot_samples(
    images: torch.Tensor,
    generated: Sequence[str],
    references: Optional[Sequence[Sequence[str]]] = None,
    attn_weights: Optional[torch.Tensor] = None,
    path: Optional[PathLike] = None,
    max_references: int = 2,
) -> Figure:
    """
    Images with their generated and reference captions; with attention
    weights, one row per image: the image, then the attention map behind
    each generated word laid over it.

    Inputs:
    - images: (N, 3, H, W), uint8 or float in [0, 1]
    - generated: N generated captions (strings; <START>/<END> are dropped)
    - references: for each image a list of reference captions, or None
    - attn_weights: (N, T, Da, Da) for an attention model, or None; word t
      of a caption goes with attn_weights[n, t]
    - path: write the figure to this PNG file as well
    - max_references: reference captions shown per image

    Returns:
    - the matplotlib Figure
    """
    N = images.shape[0]
    if len(generated) != N or (references is not None and len(references) != N):
        raise ValueError(
            f"need one generated caption (and one list of references) per image; got {N} images, "
            f"{len(generated)} captions and {'no' if references is None else len(references)} reference lists"
        )
    words = [caption_words(c) for c in generated]
    texts = []
    for n in range(N):
        lines = ["gen: " + " ".join(words[n])]
        for ref in (references[n][:max_references] if references is not None else []):
            lines.append("ref: " + " ".join(caption_words(ref)))
        texts.append("\n".join(textwrap.fill(line, 30, subsequent_indent="  ") for line in lines))

    if attn_weights is None:
        fig = _caption_grid(images, texts)
    else:
        if attn_weights.shape[0] != N:
            raise ValueError(f"attn_weights must be (N, T, Da, Da) with N = {N}; got {tuple(attn_weights.shape)}")
        fig = _attention_rows(images, texts, words, attn_weights)
    if path is not None:
        save_figure(fig, path)
    return fig


def _caption_grid(images: torch.Tensor, texts: Sequence[str]) -> Figure:
    """Images in a grid of up to 4 columns, each with its text below."""
    N = images.shape[0]
    cols = min(4, N)
    rows = (N + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 4.0 * rows), dpi=DPI)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for n in range(N):
        axes[n].imshow(_to_hwc(images[n]))
        axes[n].set_title(texts[n], fontsize=8, loc="left", y=-0.02, va="top")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=0.08, hspace=0.55, wspace=0.08)
    return fig


def _attention_rows(images: torch.Tensor, texts: Sequence[str], words, attn_weights: torch.Tensor) -> Figure:
    """
    One row per image: the image, its text, then one panel per word showing
    the image lit by that word's attention (dark where it is low).
    """
    N, T = attn_weights.shape[:2]
    H, W = images.shape[2:]
    num_words = max(1, min(T, max(len(w) for w in words)))
    ratios = [1.0, 1.6] + [1.0] * num_words
    fig = Figure(figsize=(1.6 * sum(ratios), 1.9 * N), dpi=DPI)
    axes = fig.subplots(N, len(ratios), squeeze=False, gridspec_kw={"width_ratios": ratios})
    for n in range(N):
        for ax in axes[n]:
            ax.axis("off")
        image = _to_hwc(images[n])
        axes[n, 0].imshow(image)
        axes[n, 1].text(0.0, 1.0, texts[n], fontsize=7, va="top", ha="left", transform=axes[n, 1].transAxes)
        maps = upsample_attention(attn_weights[n], H, W)
        for t, word in enumerate(words[n][:num_words]):
            lit = image * (0.15 + 0.85 * maps[t][:, :, None])
            axes[n, t + 2].imshow(lit)
            axes[n, t + 2].set_title(word, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.02, hspace=0.35, wspace=0.06)
    return fig


def plot_loss_curves(
    histories: Mapping[str, Sequence[float]],
    smooth: int = 1,
    path: Optional[PathLike] = None,
    title: str = "Training loss",
) -> Figure:
    """
    The training loss of several runs against the minibatch step.

    Inputs:
    - histories: run name -> loss of every minibatch (as train_captioner
      returns them)
    - smooth: also draw the moving average over this many steps (1: none)
    - path: write the figure to this PNG file as well
    - title: the axes' title

    Returns:
    - the matplotlib Figure
    """
    fig = Figure(figsize=(7, 4), dpi=DPI)
    ax = fig.subplots()
    for name, losses in histories.items():
        losses = np.asarray(losses, dtype=np.float64)
        steps = np.arange(1, len(losses) + 1)
        if smooth > 1 and len(losses) >= smooth:
            line = ax.plot(steps, losses, alpha=0.25)[0]
            average = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
            ax.plot(steps[smooth - 1 :], average, color=line.get_color(), label=name)
        else:
            ax.plot(steps, losses, label=name)
    ax.set_xlabel("minibatch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if histories:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig: Figure, path: PathLike) -> None:
    """Write a figure as PNG, atomically (temporary name, then rename)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
