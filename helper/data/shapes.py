"""
"shapes": a captioning data set that is generated, not downloaded.

Each 112x112 image shows 2 or 3 coloured objects (a shape, a colour, a size)
on a textured grey background sprinkled with small coloured specks. The
objects form two groups on either side of the image's middle, one group above
(or left of) the other, and the captions say so:

    a small red circle above a large blue square
    a large green square and a small white triangle left of a small red circle

Every image has 2 or 4 correct captions: the groups may come in either order
("above" / "below", "left of" / "right of") and the objects of a two-object
group in either order. The validation split keeps them all as references (one
row per caption). The training split has the first `train_refs` of them per
image in a fixed order, reading order first (top before bottom, left before
right), so that each training image has one target caption by default.

Why this design:
- The image encoder sees the image as a 4x4 grid of 28x28 cells. Objects are
  22 to 42 pixels wide and sit in different quadrants or halves, so each
  object fills its own cells; a caption is right only if colour, shape and
  size are bound to the right object and its position, which is what the
  attention model can look up and the mean-pooled models must squeeze
  through one vector.
- It is made to be learnt in minutes on a CPU by a decoder over the features
  of an encoder that starts from random weights: six colours far apart,
  three shapes, two sizes (a vocabulary of 22 tokens), a calm background,
  and one target caption per training image (`make demo` shows what each
  decoder learns in a few CPU minutes).
- 30,000 training images by default: with far fewer, the attention decoder
  learns them by heart within minutes, and its validation captions stop
  improving.
- Every colour appears at most once per image, so every colour word names a
  single object: the grounding data ("{split}_boxes", "{split}_word_objects",
  see helper/data/format.py) says which one.

Generation is vectorised numpy, deterministic from a seed, and cached as HDF5
in the data folder under a name that encodes the parameters; the parameters
are also stored in the file and checked when it is loaded.
"""
import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from helper.common.files import PathLike, atomic_output
from helper.data.format import CAPTION_LENGTH, END, NULL, START, make_vocab
from helper.data.storage import H5SplitWriter, default_data_dir, read_h5, read_h5_params, write_h5_attrs

SHAPES_VERSION = 2  # bump whenever the images or captions a seed gives change
IMAGE_SIZE = 112
MAX_OBJECTS = 3
SHAPE_NAMES = ("circle", "square", "triangle")
COLOURS = {  # far apart in hue and brightness, and none of them grey like the background
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 190),
    "white": (250, 250, 250),
}
COLOUR_NAMES = tuple(COLOURS)
SIZE_NAMES = ("small", "large")
RADIUS_RANGE = {"small": (11.0, 14.0), "large": (18.0, 21.0)}  # pixels: 22-28 and 36-42 wide
RELATIONS = {  # axis -> (words for first group before second, words for the reverse)
    0: (("above",), ("below",)),  # axis 0: groups stacked vertically
    1: (("left", "of"), ("right", "of")),  # axis 1: groups side by side
}
WORDS = ("a", "and", "above", "below", "left", "right", "of") + SIZE_NAMES + COLOUR_NAMES + SHAPE_NAMES
VOCAB = make_vocab(WORDS)
TOKEN = VOCAB["token_to_idx"]
MAX_JITTER = 7.0  # pixels an object may move off its slot's centre, each way
WINDOW = 40  # side of the square of pixels drawn around an object's centre
RENDER_CHUNK = 500  # images rendered at once; fixed so that a seed always gives the same pixels
NUM_SPECKS = 14  # distractor specks per image
BLOTCH_CONTRAST = 30.0  # grey levels between the darkest and brightest background blotches
STRIPE_CONTRAST = 4.0  # amplitude of the background stripes
NOISE_STD = 4.0  # per-pixel noise


# ---------------------------------------------------------------------------
# Scenes: what is where


def sample_scenes(num_images: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """
    Draw the content and layout of num_images scenes.

    Inputs:
    - num_images: how many scenes
    - rng: the random generator

    Returns a dict of arrays, one row per scene, object slots padded to
    MAX_OBJECTS (padding: shape/colour/size -1, never read):
    - num_objects: int64 (N,), 2 or 3
    - first_group: int64 (N,), objects 0..first_group-1 form the first
      group (top or left), the rest the second group
    - axis: int64 (N,), 0 when the groups are stacked vertically, 1 side by side
    - shape, colour, size: int64 (N, MAX_OBJECTS), indices into SHAPE_NAMES,
      COLOUR_NAMES, SIZE_NAMES; colours differ within a scene
    - radius: float64 (N, MAX_OBJECTS), pixels
    - centre: float64 (N, MAX_OBJECTS, 2), (x, y) in pixels; within a
      two-object group the objects go left to right (top to bottom)
    """
    n = num_images
    num_objects = rng.integers(2, MAX_OBJECTS + 1, n)
    # With 3 objects, the first group has 1 or 2 of them; with 2, one each.
    first_group = np.where(num_objects == 3, rng.integers(1, 3, n), 1)
    axis = rng.integers(0, 2, n)
    shape = rng.integers(0, len(SHAPE_NAMES), (n, MAX_OBJECTS))
    colour = np.argsort(rng.random((n, len(COLOURS))), axis=1)[:, :MAX_OBJECTS]  # distinct colours
    size = rng.integers(0, len(SIZE_NAMES), (n, MAX_OBJECTS))
    low = np.array([RADIUS_RANGE[s][0] for s in SIZE_NAMES])[size]
    high = np.array([RADIUS_RANGE[s][1] for s in SIZE_NAMES])[size]
    radius = rng.uniform(low, high)

    # Slot k's position: along the relation axis, the middle of the first or
    # second half; across it, the middle of the image for a lone object, or
    # the middles of the two quarters for a pair.
    slot = np.arange(MAX_OBJECTS)[None, :]
    in_first = slot < first_group[:, None]
    group_size = np.where(in_first, first_group[:, None], (num_objects - first_group)[:, None])
    rank = np.where(in_first, slot, slot - first_group[:, None])  # position within the group
    half = IMAGE_SIZE / 2
    along = np.where(in_first, half / 2, 3 * half / 2)
    across = np.where(group_size == 1, half, half / 2 + rank * half)
    # Jitter keeps each object inside its 56x56 quarter, 2 pixels clear of its
    # edges, and small enough that the two groups stay plainly apart.
    slack = np.minimum(half / 2 - radius - 2, MAX_JITTER)
    along = along + rng.uniform(-1, 1, (n, MAX_OBJECTS)) * slack
    across = across + rng.uniform(-1, 1, (n, MAX_OBJECTS)) * slack
    x = np.where(axis[:, None] == 0, across, along)
    y = np.where(axis[:, None] == 0, along, across)

    present = slot < num_objects[:, None]
    return {
        "num_objects": num_objects,
        "first_group": first_group,
        "axis": axis,
        "shape": np.where(present, shape, -1),
        "colour": np.where(present, colour, -1),
        "size": np.where(present, size, -1),
        "radius": radius,
        "centre": np.stack([x, y], axis=-1),
    }


# ---------------------------------------------------------------------------
# Captions


def object_words(scenes: Dict[str, np.ndarray], i: int, k: int) -> List[str]:
    """The four words that name object k of scene i: a, size, colour, shape."""
    return ["a", SIZE_NAMES[scenes["size"][i, k]], COLOUR_NAMES[scenes["colour"][i, k]], SHAPE_NAMES[scenes["shape"][i, k]]]


def caption_variants(scenes: Dict[str, np.ndarray], i: int) -> List[Tuple[List[str], List[int]]]:
    """
    All correct captions of scene i, the reading-order one first.

    Inputs:
    - scenes: as returned by sample_scenes
    - i: the scene

    Returns:
    - a list of (words, objects) pairs: the caption's words, and for each
      word the object it names (-1 for words that name none)
    """
    n, f, axis = scenes["num_objects"][i], scenes["first_group"][i], scenes["axis"][i]
    first, second = list(range(f)), list(range(f, n))
    forward, reverse = RELATIONS[int(axis)]

    def orders(group):
        return [group, group[::-1]] if len(group) > 1 else [group]

    variants = []
    for lead, relation, tail in [(first, forward, second), (second, reverse, first)]:
        for lead_order in orders(lead):
            for tail_order in orders(tail):
                words, objects = [], []
                for part, group in enumerate([lead_order, tail_order]):
                    if part == 1:
                        words += relation
                        objects += [-1] * len(relation)
                    for rank, k in enumerate(group):
                        if rank > 0:
                            words.append("and")
                            objects.append(-1)
                        words += object_words(scenes, i, k)
                        objects += [-1, k, k, k]  # the article names no object; the attributes do
                variants.append((words, objects))
    return variants


def encode_caption(words: List[str], objects: List[int]) -> Tuple[np.ndarray, np.ndarray]:
    """
    Inputs:
    - words: at most 15 words
    - objects: the object each word names, or -1

    Returns a tuple of:
    - caption: int64 (17,): <START>, the words' indices, <END>, <NULL> padding
    - word_objects: int64 (17,): objects aligned with caption, -1 elsewhere
    """
    if len(words) > CAPTION_LENGTH - 2:
        raise ValueError(f"a caption may have at most {CAPTION_LENGTH - 2} words; got {len(words)}: {words}")
    caption = np.full(CAPTION_LENGTH, NULL, dtype=np.int64)
    caption[0] = START
    caption[1 : len(words) + 1] = [TOKEN[w] for w in words]
    caption[len(words) + 1] = END
    word_objects = np.full(CAPTION_LENGTH, -1, dtype=np.int64)
    word_objects[1 : len(words) + 1] = objects
    return caption, word_objects


def caption_rows(scenes: Dict[str, np.ndarray], num_refs: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    The caption rows of a batch of scenes: the first num_refs variants of
    each, in the order of caption_variants (reading order first).

    Inputs:
    - scenes: as returned by sample_scenes, N scenes
    - num_refs: rows per scene (fewer when a scene has fewer variants)

    Returns a tuple of:
    - captions: int64 (R, 17)
    - image_index: int64 (R,), the scene of each row
    - word_objects: int64 (R, 17)
    """
    captions, image_index, word_objects = [], [], []
    for i in range(len(scenes["axis"])):
        for words, objects in caption_variants(scenes, i)[:num_refs]:
            caption, objects = encode_caption(words, objects)
            captions.append(caption)
            word_objects.append(objects)
            image_index.append(i)
    return np.stack(captions), np.array(image_index, dtype=np.int64), np.stack(word_objects)


# ---------------------------------------------------------------------------
# Rendering


def _upsample_matrix(coarse: int, fine: int) -> np.ndarray:
    """(fine, coarse) matrix of linear interpolation from coarse to fine samples."""
    positions = (np.arange(fine) + 0.5) * coarse / fine - 0.5
    lower = np.clip(np.floor(positions).astype(int), 0, coarse - 1)
    upper = np.clip(lower + 1, 0, coarse - 1)
    weight = np.clip(positions - lower, 0, 1)
    matrix = np.zeros((fine, coarse))
    matrix[np.arange(fine), lower] += 1 - weight
    matrix[np.arange(fine), upper] += weight
    return matrix


def render_background(num_images: int, rng: np.random.Generator) -> np.ndarray:
    """
    Textured grey backgrounds: smooth blotches plus faint stripes, each
    image with its own brightness and a slight tint.

    Returns:
    - float32 (N, H, W, 3), values roughly in [40, 190]
    """
    size = IMAGE_SIZE
    up = _upsample_matrix(6, size).astype(np.float32)
    blotches = up @ rng.random((num_images, 6, 6), dtype=np.float32) @ up.T  # (N, H, W) in [0, 1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi, (num_images, 1, 1)).astype(np.float32)
    period = rng.uniform(6, 16, (num_images, 1, 1)).astype(np.float32)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    brightness = rng.uniform(85, 145, (num_images, 1, 1)).astype(np.float32)
    grey = brightness + BLOTCH_CONTRAST * (blotches - 0.5) + STRIPE_CONTRAST * stripes
    tint = rng.uniform(-10, 10, (num_images, 1, 1, 3)).astype(np.float32)
    return grey[..., None] + tint


def add_specks(images: np.ndarray, rng: np.random.Generator) -> None:
    """
    Sprinkle NUM_SPECKS small squares (1-3 pixels) of random colours over
    each image, in place: noise that a model must learn to ignore.

    Inputs:
    - images: float32 (N, H, W, 3)
    """
    n = images.shape[0]
    side = rng.integers(1, 4, (n, NUM_SPECKS))
    corner = rng.integers(0, IMAGE_SIZE - 3, (n, NUM_SPECKS, 2))
    colour = rng.uniform(0, 255, (n, NUM_SPECKS, 3)).astype(np.float32)
    for dy in range(3):
        for dx in range(3):
            image_idx, speck_idx = np.nonzero((dy < side) & (dx < side))
            ys = corner[image_idx, speck_idx, 1] + dy
            xs = corner[image_idx, speck_idx, 0] + dx
            images[image_idx, ys, xs] = colour[image_idx, speck_idx]


def shape_masks(shape: np.ndarray, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """
    Which pixels each object covers.

    Inputs:
    - shape: int64 (K,), indices into SHAPE_NAMES
    - dx, dy: float32 (K, P, P), pixel centres relative to the object's centre
    - radius: (K,), every shape fits in the square [-radius, radius]^2

    Returns:
    - bool (K, P, P)
    """
    r = radius[:, None, None]
    ax, ay = np.abs(dx), np.abs(dy)
    tests = {
        "circle": lambda: dx**2 + dy**2 <= r**2,
        "square": lambda: np.maximum(ax, ay) <= 0.82 * r,
        # apex up at -r, base at +0.75r, base half-width r
        "triangle": lambda: (dy >= -r) & (dy <= 0.75 * r) & (ax <= (dy + r) / 1.75),
    }
    masks = np.zeros(dx.shape, dtype=bool)
    for index, name in enumerate(SHAPE_NAMES):
        chosen = shape == index
        if chosen.any():
            masks[chosen] = tests[name]()[chosen]
    return masks


def draw_objects(images: np.ndarray, scenes: Dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """
    Paint the scenes' objects into the images, in place, and measure their
    boxes.

    Inputs:
    - images: float32 (N, H, W, 3)
    - scenes: as returned by sample_scenes, N scenes

    Returns:
    - boxes: float32 (N, MAX_OBJECTS, 4), (x0, y0, x1, y1) of the painted
      pixels (x1, y1 exclusive), -1 for absent objects
    """
    image_idx, slot_idx = np.nonzero(scenes["shape"] >= 0)  # one entry per object
    centre = scenes["centre"][image_idx, slot_idx]
    radius = scenes["radius"][image_idx, slot_idx]
    corner = np.floor(centre).astype(np.int64) - WINDOW // 2  # top-left of each object's window
    offsets = np.arange(WINDOW)
    dx = (corner[:, 0, None, None] + offsets[None, None, :] + 0.5 - centre[:, 0, None, None]).astype(np.float32)
    dy = (corner[:, 1, None, None] + offsets[None, :, None] + 0.5 - centre[:, 1, None, None]).astype(np.float32)
    dx, dy = np.broadcast_arrays(dx, dy)
    masks = shape_masks(scenes["shape"][image_idx, slot_idx], dx, dy, radius)

    base = np.array(list(COLOURS.values()), dtype=np.float32)[scenes["colour"][image_idx, slot_idx]]
    colour = base + rng.uniform(-18, 18, base.shape).astype(np.float32)  # no two reds alike
    obj, py, px = np.nonzero(masks)  # objects never overlap, so plain assignment is safe
    images[image_idx[obj], corner[obj, 1] + py, corner[obj, 0] + px] = colour[obj]

    rows, cols = masks.any(axis=2), masks.any(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = WINDOW - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = WINDOW - cols[:, ::-1].argmax(axis=1)
    boxes = np.full((images.shape[0], MAX_OBJECTS, 4), -1, dtype=np.float32)
    boxes[image_idx, slot_idx] = np.stack(
        [corner[:, 0] + x0, corner[:, 1] + y0, corner[:, 0] + x1, corner[:, 1] + y1], axis=1
    )
    return boxes


def render_scenes(scenes: Dict[str, np.ndarray], rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """
    Inputs:
    - scenes: as returned by sample_scenes, N scenes
    - rng: the random generator (textures, specks, colour jitter, noise)

    Returns a tuple of:
    - images: uint8 (N, 3, 112, 112)
    - boxes: float32 (N, MAX_OBJECTS, 4)
    """
    images = render_background(len(scenes["axis"]), rng)
    add_specks(images, rng)
    boxes = draw_objects(images, scenes, rng)
    images += NOISE_STD * rng.standard_normal(images.shape, dtype=np.float32)  # sensor-like noise over everything
    images = np.clip(images, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), boxes


# ---------------------------------------------------------------------------
# Generation, caching and loading


def shapes_params(num_train: int, num_val: int, seed: int, train_refs: int, val_refs: int) -> dict:
    """The parameters that determine a generated data set, as stored in its file."""
    for name, value in [("num_train", num_train), ("num_val", num_val), ("train_refs", train_refs), ("val_refs", val_refs)]:
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return {
        "dataset": "shapes",
        "version": SHAPES_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "train_refs": int(train_refs),
        "val_refs": int(val_refs),
    }


def shapes_filename(params: dict) -> str:
    """e.g. shapes-v1-n10000-1000-r1-4-s0.h5"""
    p = params
    return f"shapes-v{p['version']}-n{p['num_train']}-{p['num_val']}-r{p['train_refs']}-{p['val_refs']}-s{p['seed']}.h5"


def write_split(h5file, split: str, num_images: int, num_refs: int, seed: int) -> None:
    """
    Generate one split into an open HDF5 file, RENDER_CHUNK images at a time.
    Each chunk draws from its own generator seeded by (seed, split, chunk),
    so a chunk's content depends on nothing else.
    """
    writer = H5SplitWriter(h5file, split, max_objects=MAX_OBJECTS)
    split_code = {"train": 0, "val": 1}[split]
    for chunk, start in enumerate(range(0, num_images, RENDER_CHUNK)):
        rng = np.random.default_rng([seed, split_code, chunk])
        scenes = sample_scenes(min(RENDER_CHUNK, num_images - start), rng)
        images, boxes = render_scenes(scenes, rng)
        captions, index, word_objects = caption_rows(scenes, num_refs)
        first = writer.add_images(images, np.arange(start, start + len(images), dtype=np.int64), boxes)
        writer.add_captions(captions, index + first, word_objects)


def generate_shapes(path: PathLike, params: dict) -> Path:
    """
    Generate the data set described by params (see shapes_params) into an
    HDF5 file, written under a temporary name and renamed when complete.

    Returns:
    - the path of the file
    """
    import h5py

    path = Path(path)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as h5file:
            write_h5_attrs(h5file, VOCAB, params)
            write_split(h5file, "train", params["num_train"], params["train_refs"], params["seed"])
            write_split(h5file, "val", params["num_val"], params["val_refs"], params["seed"])
    return path


def load_shapes(
    num_train: int = 30000,
    num_val: int = 1000,
    seed: int = 0,
    train_refs: int = 1,
    val_refs: int = 4,
    data_dir: Optional[PathLike] = None,
    regenerate: bool = False,
) -> dict:
    """
    The "shapes" data set in the common format (see helper.data), generated
    on first use and then read from its cache file.

    Inputs:
    - num_train, num_val: images per split
    - seed: the seed; the same parameters always give the same data
    - train_refs: caption rows per training image (the first variants,
      reading order first)
    - val_refs: caption rows per validation image (all variants up to this
      many; at most 4 exist)
    - data_dir: folder of the cache file; None for helper.data.default_data_dir()
    - regenerate: ignore any cached file and generate anew

    Returns:
    - data: dict with train_/val_ images, captions, image_ids, boxes,
      word_objects, and vocab

    A cached file that cannot be read, is damaged or was made from other
    parameters is replaced (with a warning), never used.
    """
    params = shapes_params(num_train, num_val, seed, train_refs, val_refs)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    path = data_dir / shapes_filename(params)
    if path.is_file() and not regenerate:
        try:
            stored = read_h5_params(path)
            if stored != params:
                raise ValueError(f"{path}: made with parameters {json.dumps(stored)}, expected {json.dumps(params)}")
            return read_h5(path)
        except ValueError as error:
            warnings.warn(f"Not using the cached shapes data: {error}. Generating it again.")
    generate_shapes(path, params)
    return read_h5(path)
