"""
Drawing primitives of the README's diagrams (helper/dev/figures.py): one colour per role, boxes,
arrows, feature cuboids and grids, all in "data units" on one axes that fills the figure.
"""
import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, to_rgb  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Polygon, Rectangle  # noqa: E402

from helper.common.files import atomic_output  # noqa: E402

DPI = 150
WIDTH_PX = 1950  # every figure is this wide; its height follows from its aspect

# One colour per role, used by every figure.
COLORS = {
    "image": "#4C72B0",      # pixels, the CNN
    "feature": "#DD8452",    # c5 features and their projections
    "rnn": "#55A868",        # recurrent cells, hidden states
    "attn": "#8172B3",       # queries, scores, attention weights
    "loss": "#C44E52",       # losses, targets
    "highlight": "#C44E52",  # one grid cell and its feature vector
    "word": "#6B6B6B",       # word tokens
    "text": "#222222",
}
STYLE = {  # pinned, so that a user's matplotlibrc cannot change the look
    "font.family": "DejaVu Sans",
    "font.size": 11,
    "mathtext.fontset": "dejavusans",
}
ATTN_CMAP = LinearSegmentedColormap.from_list("attn", ["#FFFFFF", COLORS["attn"], "#2E1F5E"])


def styled(draw):
    """Run a figure function under STYLE."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def tint(color, amount):
    """Mix `color` with white; amount 0 gives white, 1 gives the colour itself."""
    rgb = np.array(to_rgb(color))
    return tuple(1.0 - amount * (1.0 - rgb))


def new_canvas(width, height):
    """A figure whose single, axis-free axes spans [0, width] x [0, height] data units."""
    inches_per_unit = WIDTH_PX / DPI / width
    fig = plt.figure(figsize=(width * inches_per_unit, height * inches_per_unit), dpi=DPI)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def put_text(ax, x, y, s, size=11, color=None, **kwargs):
    """Text centred at (x, y) unless `ha`/`va` say otherwise."""
    kwargs.setdefault("ha", "center")
    kwargs.setdefault("va", "center")
    return ax.text(x, y, s, fontsize=size, color=color or COLORS["text"], zorder=5, **kwargs)


def draw_box(ax, cx, cy, w, h, text="", color=COLORS["word"], size=11, fill=0.18, lw=1.6,
         weight="normal", ls="-", text_color=None, radius=0.18):
    """A rounded box centred at (cx, cy), lightly filled with `color`, with centred text."""
    patch = FancyBboxPatch((cx - w / 2, cy - h / 2), w, h,
                           boxstyle=f"round,pad=0,rounding_size={radius}",
                           facecolor=tint(color, fill), edgecolor=color, lw=lw, ls=ls, zorder=3)
    ax.add_patch(patch)
    if text:
        put_text(ax, cx, cy, text, size=size, weight=weight, color=text_color, linespacing=1.35)
    return patch


def draw_arrow(ax, start, end, color=COLORS["text"], lw=1.5, ls="-", text=None, text_xy=None,
           text_size=10, rad=0.0, **text_kwargs):
    """An arrow from `start` to `end`; `rad` bends it; optional label at `text_xy`
    (default: the midpoint)."""
    ax.annotate("", xy=end, xytext=start, zorder=4,
                arrowprops=dict(arrowstyle="-|>,head_length=0.5,head_width=0.25", color=color,
                                lw=lw, ls=ls, shrinkA=0, shrinkB=0,
                                connectionstyle=f"arc3,rad={rad}"))
    if text:
        tx, ty = text_xy or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        put_text(ax, tx, ty, text, size=text_size, color=color, **text_kwargs)


def draw_path_arrow(ax, points, color=COLORS["text"], lw=1.5, ls="-"):
    """A polyline through `points` with an arrow head on its last segment (for elbows)."""
    xs, ys = zip(*points[:-1])
    ax.plot(xs, ys, color=color, lw=lw, ls=ls, zorder=4, solid_capstyle="butt")
    draw_arrow(ax, points[-2], points[-1], color=color, lw=lw, ls=ls)


def panel_title(ax, x, y, s, size=14):
    """A bold, left-aligned title."""
    put_text(ax, x, y, s, size=size, weight="bold", ha="left")


def grid_lines(ax, x0, y0, size, n, color="white", lw=1.2, zorder=4):
    """The n x n cell boundaries of a square of side `size` whose lower-left is (x0, y0)."""
    for k in range(1, n):
        t = k * size / n
        ax.plot([x0 + t, x0 + t], [y0, y0 + size], color=color, lw=lw, zorder=zorder)
        ax.plot([x0, x0 + size], [y0 + t, y0 + t], color=color, lw=lw, zorder=zorder)


def draw_cuboid(ax, x0, y0, size, depth, color, n=None, highlight=None, lw=1.2, zorder=3):
    """
    A feature map drawn as a block: front face of side `size` with lower-left (x0, y0)
    (the spatial grid), receding `depth` units up and to the right (the channels).

    - n: draw an n x n grid on the faces (one cell per spatial location)
    - highlight: (row, col), row 0 at the top, shaded through the whole depth: the feature
      vector of that location
    Returns the (dx, dy) offset of the back face.
    """
    dx, dy = depth * 0.75, depth * 0.55
    front = [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size)]
    top = [(x0, y0 + size), (x0 + size, y0 + size), (x0 + size + dx, y0 + size + dy),
           (x0 + dx, y0 + size + dy)]
    side = [(x0 + size, y0), (x0 + size + dx, y0 + dy), (x0 + size + dx, y0 + size + dy),
            (x0 + size, y0 + size)]
    for face, amount in ((front, 0.30), (top, 0.50), (side, 0.65)):
        ax.add_patch(Polygon(face, closed=True, facecolor=tint(color, amount), edgecolor=color,
                             lw=lw, zorder=zorder))
    if n:
        grid_lines(ax, x0, y0, size, n, color=color, lw=0.8, zorder=zorder)
        for k in range(1, n):  # the grid continued over the top and side faces
            t = k * size / n
            ax.plot([x0 + t, x0 + t + dx], [y0 + size, y0 + size + dy], color=color, lw=0.8,
                    zorder=zorder)
            ax.plot([x0 + size, x0 + size + dx], [y0 + t, y0 + t + dy], color=color, lw=0.8,
                    zorder=zorder)
    if highlight is not None:
        highlight_column(ax, x0, y0, size / n, n, dx, dy, highlight, zorder + 0.5)
    return dx, dy


def highlight_column(ax, x0, y0, cell, n, dx, dy, where, zorder):
    """Shade one location's vector through the depth of a `draw_cuboid` (visible faces only)."""
    row, col = where
    cx, cy = x0 + col * cell, y0 + (n - 1 - row) * cell
    color = COLORS["highlight"]
    style = dict(facecolor=tint(color, 0.55), edgecolor=color, lw=1.6, zorder=zorder)
    ax.add_patch(Rectangle((cx, cy), cell, cell, **style))
    if row == 0:  # the column shows on the top face
        ax.add_patch(Polygon([(cx, cy + cell), (cx + cell, cy + cell),
                              (cx + cell + dx, cy + cell + dy), (cx + dx, cy + cell + dy)], **style))
    if col == n - 1:  # ... and on the side face
        ax.add_patch(Polygon([(cx + cell, cy), (cx + cell + dx, cy + dy),
                              (cx + cell + dx, cy + cell + dy), (cx + cell, cy + cell)], **style))


def draw_vector(ax, cx, cy, n_cells, cell, color):
    """A vector drawn as a vertical strip of `n_cells` small squares centred at (cx, cy), in
    varied tints so that it reads as "some numbers"."""
    for k in range(n_cells):
        shade = 0.25 + 0.5 * ((k * 7) % 5) / 4
        ax.add_patch(Rectangle((cx - cell / 2, cy - n_cells * cell / 2 + k * cell), cell, cell,
                               facecolor=tint(color, shade), edgecolor=color, lw=1.0, zorder=3))


def show_image(ax, image, x0, y0, size, grid=4, highlight=None):
    """Draw `image` (H, W, 3) in [0, 1] as a square of side `size` at (x0, y0), with the
    c5 grid on top and optionally one cell (row, col) outlined."""
    ax.imshow(image, extent=(x0, x0 + size, y0, y0 + size), interpolation="bilinear", zorder=2)
    ax.add_patch(Rectangle((x0, y0), size, size, fill=False, edgecolor=COLORS["image"], lw=1.6, zorder=4))
    if grid:
        grid_lines(ax, x0, y0, size, grid, color="white", lw=1.3)
    if highlight is not None:
        row, col = highlight
        cell = size / grid
        ax.add_patch(Rectangle((x0 + col * cell, y0 + (grid - 1 - row) * cell), cell, cell,
                               fill=False, edgecolor=COLORS["highlight"], lw=2.6, zorder=5))


def draw_word(ax, cx, cy, word, color=COLORS["word"], w=1.9, ls="-", size=10.5):
    """A word token (or any small input) as a pill-shaped box."""
    draw_box(ax, cx, cy, w, 0.62, word, color=color, fill=0.12, size=size, radius=0.3, ls=ls,
         text_color=color if color != COLORS["word"] else COLORS["text"])


def save_png(fig, path):
    """Save as PNG atomically (temporary name, then rename), close the figure, return the path.
    No "Software" metadata, so the bytes do not depend on the matplotlib version string."""
    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    finally:
        plt.close(fig)
    return path
