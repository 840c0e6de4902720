"""
The README's explanatory diagrams, drawn with matplotlib alone.

    python -m helper.figures [--out assets]

writes three PNGs:
- encoder.png:   112x112 image -> RegNetX-400MF -> c5 (N, 400, 4, 4) -> h0 or A
- unrolled.png:  the RNN/LSTM unrolled in time, training (teacher forcing) and greedy sampling
- attention.png: one step of the attention LSTM (scores, softmax over the 4x4 grid, gates)

Everything is drawn in "data units" on one axes that fills the figure, so that a box of
width 1 is the same size everywhere; the picture of an image is synthetic (numpy), so no
dataset, network or random state is involved and the output is the same on every run.
"""
import argparse
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from helper.dev.drawing import (
    ATTN_CMAP,
    COLORS,
    draw_arrow,
    draw_box,
    draw_cuboid,
    draw_path_arrow,
    draw_vector,
    draw_word,
    grid_lines,
    new_canvas,
    panel_title,
    put_text,
    save_png,
    show_image,
    styled,
)

# --------------------------------------------------------------------------------------
# The synthetic picture and attention weights
# --------------------------------------------------------------------------------------

def synthetic_image(size=112, supersample=4):
    """
    A small deterministic scene (a red circle, a blue square, a green triangle on a soft
    background), antialiased by drawing at `supersample` x the resolution and averaging.

    Returns:
    - image: float array (size, size, 3) in [0, 1], row 0 at the top
    """
    n = size * supersample
    # pixel centres in the coordinates of a `size` x `size` image
    v, u = (np.mgrid[0:n, 0:n] + 0.5) / supersample
    image = np.empty((n, n, 3))
    fade = 0.6 * v[..., None] / size  # a soft top-to-bottom gradient, so the scene is not flat
    image[:] = np.array([0.93, 0.91, 0.84]) * (1 - fade) + np.array([0.70, 0.82, 0.90]) * fade
    shapes = [
        ((u - 36) ** 2 + (v - 38) ** 2 < 21 ** 2, (0.85, 0.15, 0.15)),          # circle
        ((abs(u - 78) < 18) & (abs(v - 80) < 18), (0.16, 0.35, 0.80)),        # square
        ((v > 62) & (v < 100) & (abs(u - 28) < (v - 62) * 0.55), (0.20, 0.65, 0.30)),  # triangle
    ]
    for mask, rgb in shapes:
        image[mask] = rgb
    return image.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))


def example_attention_weights(center=(1.1, 1.2), sharpness=1.3, grid=4):
    """
    Illustrative attention weights, a softmax over the grid that peaks near `center`
    (row, col) — where the red circle is in `synthetic_image`.

    Returns:
    - weights: (grid, grid) array, non-negative, summing to 1
    """
    rows, cols = np.mgrid[0:grid, 0:grid]
    scores = -sharpness * ((rows - center[0]) ** 2 + (cols - center[1]) ** 2)
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


# --------------------------------------------------------------------------------------
# Figure 1: the image encoder
# --------------------------------------------------------------------------------------

REGNET_STAGES = [  # (name, spatial side, channels) for a 112x112 input
    ("stem", 56, 32), ("stage 1", 28, 32), ("stage 2", 14, 64), ("stage 3", 7, 160)]


def _draw_regnet(ax, x_left, cy, width=11.0):
    """The RegNetX-400MF trunk in a frame: a row of blocks that shrink in space and grow in
    channels. Returns the x of the frame's right edge."""
    draw_box(ax, x_left + width / 2, cy - 0.1, width, 5.2, color=COLORS["image"], fill=0.06, radius=0.3)
    put_text(ax, x_left + width / 2, cy + 2.05, "RegNetX-400MF  (torchvision, ImageNet weights)",
          size=12, weight="bold", color=COLORS["image"])
    put_text(ax, x_left + width / 2, cy + 1.5, "input: float in [0, 1], ImageNet mean/std normalised",
          size=10, color=COLORS["image"], style="italic")
    x = x_left + 0.6
    for name, side, channels in REGNET_STAGES:
        size = 0.45 + 1.8 * side / 56
        dx, _ = draw_cuboid(ax, x, cy - 0.35 - size / 2, size, 0.25 + 0.9 * channels / 160, COLORS["image"])
        put_text(ax, x + (size + dx) / 2, cy - 2.05, f"{name}\n{side}×{side}×{channels}", size=10,
              linespacing=1.3)
        x += size + dx + 0.95
    return x_left + width


def _c5_uses(ax, c5_bottom, y):
    """Row 2 of figure 1: the two ways the captioner uses c5, fed by a bus from c5's bottom."""
    bus_y = y + 2.4
    b1_x, b2_x = 2.4, 14.6
    ax.plot([c5_bottom[0], c5_bottom[0]], [c5_bottom[1], bus_y], color=COLORS["feature"], lw=1.6, zorder=4)
    ax.plot([b1_x, c5_bottom[0]], [bus_y, bus_y], color=COLORS["feature"], lw=1.6, zorder=4)
    for x in (b1_x, b2_x):
        draw_arrow(ax, (x, bus_y), (x, y + 0.65), color=COLORS["feature"], lw=1.6)

    # use 1: global average -> h0 (RNN / LSTM)
    draw_box(ax, b1_x, y, 3.9, 1.3, "mean over the\n4×4 grid  (N, 400)", color=COLORS["feature"], size=11)
    draw_arrow(ax, (b1_x + 2.0, y), (5.2, y))
    draw_box(ax, 6.6, y, 2.6, 1.3, "Linear\n400 → H", color=COLORS["feature"], size=11)
    draw_arrow(ax, (7.95, y), (8.6, y))
    draw_box(ax, 9.7, y, 2.1, 1.3, r"$h_0$  (N, H)", color=COLORS["rnn"], size=12, weight="bold")
    put_text(ax, 6.0, y - 1.0, "RNN / LSTM:\nh0 is the initial hidden state", size=11.5,
          color=COLORS["rnn"], weight="bold", va="top", linespacing=1.4)

    # use 2: the same Linear at every location -> A (attention)
    draw_box(ax, b2_x, y, 4.8, 1.3, "the same Linear 400 → H\nat each of the 16 locations",
         color=COLORS["feature"], size=11)
    draw_arrow(ax, (b2_x + 2.45, y), (17.8, y))
    a_size = 1.8
    a_dx, _ = draw_cuboid(ax, 18.0, y - a_size / 2, a_size, 1.4, COLORS["attn"], n=4)
    put_text(ax, 18.0 + a_size + a_dx + 0.2, y, "A\n(N, H, 4, 4)", size=12, weight="bold", ha="left",
          color=COLORS["attn"], linespacing=1.4)
    put_text(ax, 16.7, y - 1.0, "attention LSTM:  keys and values,\nh0 = c0 = A averaged over the grid",
          size=11.5, color=COLORS["attn"], weight="bold", va="top", linespacing=1.4)


@styled
def draw_encoder(path):
    """
    Figure 1: image -> RegNetX-400MF -> c5 (N, 400, 4, 4) -> h0 (RNN/LSTM) or A (attention).

    Inputs:
    - path: the PNG file to write
    Returns:
    - path, as a Path
    """
    fig, ax = new_canvas(24, 14.0)
    panel_title(ax, 0.4, 13.4, "Image encoder: a 112×112 image becomes a 4×4 grid of 400-d vectors")
    cy = 9.5

    # the image, with the grid of c5 cells drawn on it
    show_image(ax, synthetic_image(), 0.5, cy - 1.6, 3.2, highlight=(0, 3))
    put_text(ax, 2.1, cy + 2.05, "image  (N, 3, 112, 112)", size=11)
    put_text(ax, 0.5, cy - 1.95, "white lines: the c5 grid,\neach cell ≈ a 28×28 patch;\n"
          "red: one cell and its\n400-d vector in c5", size=10, ha="left", va="top", linespacing=1.35)
    draw_arrow(ax, (3.9, cy), (4.9, cy))
    right = _draw_regnet(ax, 5.0, cy)
    draw_arrow(ax, (right + 0.1, cy), (17.1, cy))

    # c5: the 4 x 4 x 400 block, the highlighted cell's vector shaded through the depth
    c5_x, c5_y, c5_size = 17.2, cy - 1.6, 2.6
    dx, dy = draw_cuboid(ax, c5_x, c5_y, c5_size, 2.0, COLORS["feature"], n=4, highlight=(0, 3))
    put_text(ax, c5_x + (c5_size + dx) / 2, c5_y + c5_size + dy + 0.45, "c5  (N, 400, 4, 4)", size=12,
          weight="bold", color=COLORS["feature"])
    put_text(ax, c5_x + c5_size + dx + 0.15, c5_y + c5_size / 2 + dy / 2, "400\nchannels", size=10,
          color=COLORS["feature"], ha="left", linespacing=1.2)

    _c5_uses(ax, (c5_x + c5_size / 2, c5_y), 2.6)
    return save_png(fig, path)


# --------------------------------------------------------------------------------------
# Figure 2: the recurrent network unrolled in time
# --------------------------------------------------------------------------------------

STEP_DX = 3.7          # horizontal distance between time steps
FIRST_STEP_X = 7.9     # x of step 1
COL_W = 2.4            # width of the boxes of one step
ROWS = {"input": 0.6, "embed": 1.75, "cell": 3.25, "scores": 4.75, "top": 6.0, "target": 7.15}


def _step_x(t):
    return FIRST_STEP_X + (t - 1) * STEP_DX


def _recurrent_arrows(ax, x_from, x_to, y, t, c_label=None):
    """The hidden state (solid) and, for the LSTM, the cell state (dashed) passed to the right.
    Labels start near the arrows' start, clear of anything drawn in the middle of the gap."""
    label_x = x_from + 0.3
    draw_arrow(ax, (x_from, y + 0.15), (x_to, y + 0.15), color=COLORS["rnn"], lw=2.0,
           text=f"$h_{{{t}}}$", text_xy=(label_x, y + 0.47), text_size=11.5, ha="left")
    draw_arrow(ax, (x_from, y - 0.3), (x_to, y - 0.3), color=COLORS["rnn"], lw=1.4, ls="--",
           text=c_label or f"$c_{{{t}}}$", text_xy=(label_x, y - 0.62), text_size=10.5, ha="left")


def _image_to_h0(ax, y0):
    """Left margin of an unrolled panel: image -> encoder -> h0 (and c0 = 0) into step 1."""
    cell_y = y0 + ROWS["cell"]
    show_image(ax, synthetic_image(), 0.95, cell_y + 1.25, 2.2, grid=0)
    draw_arrow(ax, (2.05, cell_y + 1.2), (2.05, cell_y + 0.72))
    draw_box(ax, 2.05, cell_y, 3.3, 1.3, "encoder, mean,\nLinear 400 → H", color=COLORS["feature"], size=10.5)
    _recurrent_arrows(ax, 3.7, _step_x(1) - COL_W / 2, cell_y, 0, c_label="$c_0 = 0$ (LSTM)")


def _unrolled_column(ax, t, y0, input_word, last):
    """One time step, from the input word up to the scores; the recurrent arrows leave it to
    the right unless it is the `last` step drawn."""
    x = _step_x(t)
    draw_word(ax, x, y0 + ROWS["input"], input_word, w=COL_W - 0.2)
    draw_arrow(ax, (x, y0 + ROWS["input"] + 0.32), (x, y0 + ROWS["embed"] - 0.3))
    draw_box(ax, x, y0 + ROWS["embed"], COL_W, 0.6, "embed", color=COLORS["word"], size=10)
    draw_arrow(ax, (x, y0 + ROWS["embed"] + 0.3), (x, y0 + ROWS["cell"] - 0.6), text=f"$x_{{{t}}}$",
           text_xy=(x + 0.38, y0 + (ROWS["embed"] + ROWS["cell"]) / 2 - 0.05), text_size=11)
    draw_box(ax, x, y0 + ROWS["cell"], COL_W, 1.2, "RNN / LSTM\nstep", color=COLORS["rnn"], size=10.5,
         weight="bold")
    draw_arrow(ax, (x, y0 + ROWS["cell"] + 0.6), (x, y0 + ROWS["scores"] - 0.3), color=COLORS["rnn"],
           text=f"$h_{{{t}}}$", text_xy=(x + 0.4, y0 + (ROWS["cell"] + ROWS["scores"]) / 2 + 0.05),
           text_size=11)
    draw_box(ax, x, y0 + ROWS["scores"], COL_W, 0.6, "Linear H → V", color=COLORS["word"], size=10)
    draw_arrow(ax, (x, y0 + ROWS["scores"] + 0.3), (x, y0 + ROWS["top"] - 0.3), color=COLORS["word"])
    if not last:
        _recurrent_arrows(ax, x + COL_W / 2, x + STEP_DX - COL_W / 2, y0 + ROWS["cell"], t)


def _panel_frame(ax, y0, title, row_labels):
    """What both unrolled panels share: the title, image -> h0 on the left, and the row names
    (right-aligned just left of step 1)."""
    panel_title(ax, 0.3, y0 + 8.3, title)
    _image_to_h0(ax, y0)
    for row, label in row_labels.items():
        put_text(ax, _step_x(1) - COL_W / 2 - 0.3, y0 + ROWS[row], label, size=10.5, ha="right",
              color=COLORS["word"], style="italic")


def _teacher_forcing_panel(ax, y0):
    """Panel (a): ground-truth words in, the same words shifted by one as targets, a loss per step."""
    caption = ["<START>", "a", "red", "circle", "<END>", "<NULL>"]
    inputs, targets = caption[:-1], caption[1:]
    _panel_frame(ax, y0, "(a) Training with teacher forcing: the ground-truth caption is the input; "
                 "shifted by one, it is the target",
                 {"input": "input  captions[:, :-1]", "target": "target  captions[:, 1:]"})
    for t, (word_in, word_out) in enumerate(zip(inputs, targets), start=1):
        x = _step_x(t)
        _unrolled_column(ax, t, y0, word_in, last=t == len(inputs))
        ignored = word_out == "<NULL>"
        color, ls = (COLORS["word"], "--") if ignored else (COLORS["loss"], "-")
        draw_box(ax, x, y0 + ROWS["top"], COL_W, 0.6, "ignored" if ignored else f"loss $L_{{{t}}}$",
             color=color, size=10.5, ls=ls)
        draw_arrow(ax, (x, y0 + ROWS["target"] - 0.31), (x, y0 + ROWS["top"] + 0.3), color=color)
        draw_word(ax, x, y0 + ROWS["target"], word_out, color=color, ls=ls, w=COL_W - 0.2)
    put_text(ax, _step_x(len(inputs)) + COL_W / 2 + 0.5, y0 + ROWS["top"] + 0.55,
          "temporal softmax loss\n"
          r"$L = \Sigma_{n}\,\Sigma_{t}\; L_{t}\ /\ N$" "\n"
          "(cross-entropy per step;\n<NULL> targets, the\npadding, are ignored)",
          size=10.5, ha="left", color=COLORS["loss"], linespacing=1.5)


def _greedy_panel(ax, y0):
    """Panel (b): each step's most likely word is the next step's input, until <END>."""
    outputs = ["a", "red", "circle", "<END>"]
    inputs = ["<START>"] + outputs[:-1]
    _panel_frame(ax, y0, "(b) Inference, greedy sampling: each step's argmax word is fed back as "
                 "the next input", {"input": "input", "target": "output"})
    for t, (word_in, word_out) in enumerate(zip(inputs, outputs), start=1):
        x = _step_x(t)
        _unrolled_column(ax, t, y0, word_in, last=t == len(inputs))
        draw_box(ax, x, y0 + ROWS["top"], COL_W, 0.6, "argmax", color=COLORS["attn"], size=10.5)
        draw_arrow(ax, (x, y0 + ROWS["top"] + 0.3), (x, y0 + ROWS["target"] - 0.31), color=COLORS["attn"])
        draw_word(ax, x, y0 + ROWS["target"], word_out, color=COLORS["attn"], w=COL_W - 0.2)
        if t < len(inputs):  # the fed-back word: right, down the gap between steps, into the input
            gap_x = x + STEP_DX / 2 + 0.25
            out_y, in_y = y0 + ROWS["target"], y0 + ROWS["input"]
            draw_path_arrow(ax, [(x + COL_W / 2 - 0.1, out_y), (gap_x, out_y), (gap_x, in_y),
                             (x + STEP_DX - COL_W / 2 + 0.1, in_y)],
                        color=COLORS["attn"], lw=1.3, ls=(0, (4, 2)))
    put_text(ax, _step_x(len(inputs)) + COL_W / 2 + 0.5, y0 + ROWS["cell"] + 0.9,
          "the caption ends at its first <END>;\n"
          "sample() runs max_length = 15 steps\n\n"
          "captions (N, max_length): the generated\n"
          "words, <START> not included",
          size=10.5, ha="left", color=COLORS["attn"], linespacing=1.5)


@styled
def draw_unrolled(path):
    """
    Figure 2: (a) teacher-forced training, (b) greedy sampling, both unrolled in time.

    Inputs:
    - path: the PNG file to write
    Returns:
    - path, as a Path
    """
    fig, ax = new_canvas(28.5, 18.3)
    _teacher_forcing_panel(ax, 9.5)
    ax.plot([0.3, 28.2], [9.35, 9.35], color="#CCCCCC", lw=1.0)
    _greedy_panel(ax, 0.2)
    return save_png(fig, path)


# --------------------------------------------------------------------------------------
# Figure 3: one attention-LSTM step
# --------------------------------------------------------------------------------------

def _weights_grid(ax, weights, x0, y0, size):
    """The 4 x 4 attention weights as a heat map with their values written in."""
    n = weights.shape[0]
    ax.imshow(weights, extent=(x0, x0 + size, y0, y0 + size), cmap=ATTN_CMAP, vmin=0,
              vmax=weights.max() * 1.15, interpolation="nearest", zorder=2)
    ax.add_patch(Rectangle((x0, y0), size, size, fill=False, edgecolor=COLORS["attn"], lw=1.6, zorder=4))
    grid_lines(ax, x0, y0, size, n, color="white", lw=1.0)
    cell = size / n
    for r in range(n):
        for c in range(n):
            w = weights[r, c]
            put_text(ax, x0 + (c + 0.5) * cell, y0 + (n - 0.5 - r) * cell, f"{w:.2f}", size=9.5,
                  color="white" if w > 0.45 * weights.max() else COLORS["text"])


def _overlay(ax, image, weights, x0, y0, size):
    """The image seen through the attention: bright where the weight is high."""
    block = np.ones((image.shape[0] // weights.shape[0],) * 2)
    light = np.sqrt(np.kron(weights / weights.max(), block))
    show_image(ax, image * (0.3 + 0.7 * light[..., None]), x0, y0, size)


def _attention_part(ax, image, weights):
    """Top of figure 3: query and keys -> scores -> softmax -> weights -> attn = sum w_i A_i.
    Returns the point where attn leaves (downwards)."""
    top, low, col = 13.2, 8.7, 17.4   # row heights; x of the weights and of the weighted sum
    # the query, the scores, the softmax, the weights and what they look at
    draw_vector(ax, 1.0, top, 6, 0.32, COLORS["rnn"])
    put_text(ax, 1.5, top, "query\n" r"$h_{t-1}$" "\n(N, H)", size=11, ha="left", linespacing=1.4)
    draw_arrow(ax, (3.0, top), (4.8, top), color=COLORS["rnn"])
    draw_box(ax, 7.4, top, 5.0, 1.5, r"$s_i = h_{t-1} \cdot A_i \,/\, \sqrt{H}$" "\nscores  (N, 16)",
         color=COLORS["attn"], size=11.5)
    draw_arrow(ax, (9.9, top), (11.1, top), color=COLORS["attn"])
    draw_box(ax, 12.85, top, 3.3, 1.5, "softmax over\nthe 16 locations", color=COLORS["attn"], size=11.5)
    draw_arrow(ax, (14.5, top), (15.6, top), color=COLORS["attn"])
    _weights_grid(ax, weights, col - 1.7, top - 1.7, 3.4)
    put_text(ax, col, top + 2.15, r"weights $w$  (N, 4, 4),  $\Sigma_i\, w_i = 1$", size=11,
          color=COLORS["attn"], weight="bold")
    draw_arrow(ax, (col + 1.8, top), (20.9, top), color=COLORS["attn"])
    _overlay(ax, image, weights, 21.1, top - 1.7, 3.4)
    put_text(ax, 22.8, top + 2.15, "w on the image:\nwhere this step looks", size=11,
          color=COLORS["attn"], linespacing=1.3)

    # image -> A; A gives the keys (up, to the scores) and the values (right, to the sum)
    show_image(ax, image, 0.4, low - 1.3, 2.6)
    put_text(ax, 1.7, low - 1.75, "image", size=11)
    draw_arrow(ax, (3.15, low), (5.2, low), text="encoder,\nLinear per cell", text_xy=(4.15, low + 0.7),
           text_size=10, color=COLORS["feature"])
    dx, dy = draw_cuboid(ax, 5.4, low - 1.1, 2.2, 1.3, COLORS["attn"], n=4, highlight=(1, 1))
    put_text(ax, 6.5 + dx / 2, low - 1.6, "A  (N, H, 4, 4)", size=11.5, weight="bold", color=COLORS["attn"])
    put_text(ax, 6.5 + dx / 2, low - 2.15, r"16 vectors $A_i \in \mathbb{R}^H$", size=10.5)
    keys_x, keys_from = 7.4, low + 1.1 + dy + 0.05
    draw_arrow(ax, (keys_x, keys_from), (keys_x, top - 0.77), color=COLORS["attn"],
           text=r"keys $A_i$", text_xy=(keys_x + 0.2, (keys_from + top - 0.77) / 2), text_size=11, ha="left")
    draw_arrow(ax, (5.4 + 2.2 + dx + 0.1, low), (col - 2.35, low), color=COLORS["attn"],
           text=r"values $A_i$", text_xy=(11.8, low + 0.35), text_size=11)
    draw_box(ax, col, low, 4.6, 1.5, r"$\mathrm{attn} = \Sigma_i\, w_i A_i$" "\n(N, H)", color=COLORS["attn"],
         size=12, weight="bold")
    draw_arrow(ax, (col, top - 1.72), (col, low + 0.77), color=COLORS["attn"], text=r"$w_i$",
           text_xy=(col + 0.2, (top - 1.72 + low + 0.77) / 2), text_size=12, ha="left")
    return col, low - 0.77


def _lstm_part(ax, attn_out):
    """Bottom of figure 3: the LSTM step with the attention vector as a third input."""
    y = 3.5
    put_text(ax, 0.4, 5.85, "LSTM step with attention", size=12.5, weight="bold", ha="left",
          color=COLORS["rnn"])
    draw_word(ax, 1.75, y + 0.9, r"$x_t$  (N, W)", w=2.6, size=11)
    draw_word(ax, 1.75, y - 0.9, r"$h_{t-1}$  (N, H)", color=COLORS["rnn"], w=2.6, size=11)
    pre_left, pre_right = 4.1, 18.3
    draw_arrow(ax, (3.05, y + 0.9), (pre_left, y + 0.3))
    draw_arrow(ax, (3.05, y - 0.9), (pre_left, y - 0.3), color=COLORS["rnn"])
    draw_box(ax, (pre_left + pre_right) / 2, y, pre_right - pre_left, 1.7,
         r"$a = x_t W_x + h_{t-1} W_h + \mathrm{attn}\, W_{attn} + b$" "\n"
         r"(N, 4H);   $W_x$ (W, 4H),  $W_h$ (H, 4H),  $W_{attn}$ (H, 4H),  $b$ (4H,)",
         color=COLORS["rnn"], size=11.5)
    draw_arrow(ax, attn_out, (attn_out[0], y + 0.85), color=COLORS["attn"], text="attn  (N, H)",
           text_xy=(attn_out[0] - 0.2, (attn_out[1] + y + 0.85) / 2), text_size=11, ha="right")

    # the gates: a is split into 4 chunks of H (order i, f, o, g); drawn with o last because
    # i, f, g make the cell state and o only the hidden state
    gate_x, c_x, c_y, h_y = 20.6, 24.55, y + 1.0, y - 1.5
    gates = [(r"$i = \sigma(a_i)$", y + 1.5, c_y), (r"$f = \sigma(a_f)$", y + 0.5, c_y),
             (r"$g = \tanh(a_g)$", y - 0.5, c_y), (r"$o = \sigma(a_o)$", y - 1.5, h_y)]
    put_text(ax, gate_x, y + 2.4, "a split in 4 × H:\ni, f, o, g", size=10, color=COLORS["rnn"],
          linespacing=1.3)
    for label, gy, target_y in gates:
        draw_arrow(ax, (pre_right, y), (gate_x - 1.15, gy), color=COLORS["rnn"], lw=1.1)
        draw_box(ax, gate_x, gy, 2.3, 0.78, label, color=COLORS["rnn"], size=11)
        draw_arrow(ax, (gate_x + 1.15, gy), (c_x - 2.15, target_y), color=COLORS["rnn"], lw=1.1)
    draw_box(ax, c_x, c_y, 4.3, 1.0, r"$c_t = f \odot c_{t-1} + i \odot g$", color=COLORS["rnn"], size=11.5)
    draw_box(ax, c_x, h_y, 4.3, 1.0, r"$h_t = o \odot \tanh(c_t)$", color=COLORS["rnn"], size=11.5,
         weight="bold")
    draw_arrow(ax, (c_x, c_y - 0.5), (c_x, h_y + 0.5), color=COLORS["rnn"])
    put_text(ax, c_x, h_y - 0.7, r"$h_t$: the next step's query;" "\nLinear H → V: the word scores",
          size=10.5, va="top", linespacing=1.4)


@styled
def draw_attention(path):
    """
    Figure 3: one attention step and the LSTM step that consumes it.

    Inputs:
    - path: the PNG file to write
    Returns:
    - path, as a Path
    """
    fig, ax = new_canvas(27.2, 16.7)
    panel_title(ax, 0.4, 16.1, "One step of the attention LSTM: the previous hidden state chooses "
                 "where to look in the 4×4 grid")
    attn_out = _attention_part(ax, synthetic_image(), example_attention_weights())
    _lstm_part(ax, attn_out)
    return save_png(fig, path)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

FIGURES = {"encoder.png": draw_encoder, "unrolled.png": draw_unrolled, "attention.png": draw_attention}


def make_figures(out_dir="assets"):
    """
    Draw every figure into `out_dir` (created if missing).

    Inputs:
    - out_dir: a directory
    Returns:
    - paths: list of the written PNG paths (encoder, unrolled, attention)
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"expected a directory to write the figures into, got the file {out_dir}")
    return [draw(out_dir / name) for name, draw in FIGURES.items()]


def main(argv=None):
    """Command line: `python -m helper.figures [--out DIR]`. Returns the written paths."""
    parser = argparse.ArgumentParser(description="Draw the README's explanatory figures.")
    parser.add_argument("--out", default="assets", help="output directory (default: assets)")
    args = parser.parse_args(argv)
    paths = make_figures(args.out)
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
