"""The built-in "shapes" data set: format, determinism, grounding, the cache."""

import warnings

import h5py
import numpy as np
import pytest
import torch

from helper.data import shapes
from helper.data.datasets import load_dataset
from helper.data.format import END, NULL, START, check_format, references_by_image
from helper.data.storage import DATA_DIR_ENV

SMALL = dict(num_train=40, num_val=12)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small shapes set, generated once for the read-only tests of this module."""
    return load_dataset("shapes", data_dir=tmp_path_factory.mktemp("shapes"), **SMALL)


def caption_words(data, split, row):
    """The words of one caption row, without the special tokens."""
    itos = data["vocab"]["idx_to_token"]
    words = []
    for index in data[f"{split}_captions"][row, 1:].tolist():
        if index == END:
            break
        words.append(itos[index])
    return words


def named_objects(data, split, row):
    """The objects a caption row names, in caption order, and the words in between."""
    words = caption_words(data, split, row)
    objects = data[f"{split}_word_objects"][row, 1 : len(words) + 1].tolist()
    return words, objects


def box_centres(data, split, row):
    boxes = data[f"{split}_boxes"][row]
    return (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2


# --- format ----------------------------------------------------------------


def test_shapes_follow_the_common_format_with_grounding_keys(small):
    check_format(small, "shapes")
    assert small["train_images"].shape == (40, 3, 112, 112)
    assert small["train_boxes"].shape == (40, shapes.MAX_OBJECTS, 4)
    assert small["train_word_objects"].shape == small["train_captions"].shape
    assert small["vocab"]["idx_to_token"][:4] == ["<NULL>", "<START>", "<END>", "<UNK>"]
    assert len(small["vocab"]["idx_to_token"]) < 40  # a few dozen words


def test_training_split_has_one_row_per_image_by_default(small):
    assert small["train_image_ids"].tolist() == list(range(40))


def test_validation_images_have_several_different_references(small):
    first_rows, references = references_by_image(small["val_image_ids"], small["val_captions"])
    assert len(first_rows) == 12
    for refs in references:
        assert 2 <= len(refs) <= 4
        assert len({tuple(r.tolist()) for r in refs}) == len(refs)  # all different
    # rows of one image show the same pixels
    for image_id, first in zip(small["val_image_ids"][first_rows].tolist(), first_rows.tolist()):
        rows = (small["val_image_ids"] == image_id).nonzero().flatten()
        assert all(torch.equal(small["val_images"][r], small["val_images"][first]) for r in rows)


def test_captions_have_start_end_padding_and_at_most_15_words(small):
    for split in ["train", "val"]:
        captions = small[f"{split}_captions"]
        assert (captions[:, 0] == START).all()
        for row in range(len(captions)):
            words = caption_words(small, split, row)
            assert 9 <= len(words) <= 15
            assert (captions[row, len(words) + 2 :] == NULL).all()


def test_unk_is_never_used(small):
    assert not (small["val_captions"] == 3).any() and not (small["train_captions"] == 3).any()


# --- content: captions say what the image shows ----------------------------


def test_every_object_is_named_once_by_size_colour_and_shape_words(small):
    vocab = small["vocab"]["idx_to_token"]
    for row in range(len(small["val_captions"])):
        words, objects = named_objects(small, "val", row)
        present = int((small["val_boxes"][row, :, 0] >= 0).sum())
        assert sorted(o for o in objects if o >= 0) == sorted(list(range(present)) * 3)
        for word, obj in zip(words, objects):
            is_attribute = word in shapes.SIZE_NAMES + shapes.COLOUR_NAMES + shapes.SHAPE_NAMES
            assert is_attribute == (obj >= 0), (word, obj, vocab)


def test_colour_words_match_the_pixels_in_the_named_box(small):
    for row in range(len(small["val_captions"])):
        words, objects = named_objects(small, "val", row)
        xs, ys = box_centres(small, "val", row)
        for word, obj in zip(words, objects):
            if word in shapes.COLOURS:
                x, y = int(xs[obj]), int(ys[obj])
                patch = small["val_images"][row, :, y - 1 : y + 2, x - 1 : x + 2].float().mean(dim=(1, 2))
                expected = torch.tensor(shapes.COLOURS[word], dtype=torch.float32)
                assert (patch - expected).abs().max() < 45, (word, patch, expected)


def test_spatial_words_match_the_boxes(small):
    checked = 0
    for split in ["train", "val"]:
        for row in range(len(small[f"{split}_captions"])):
            words, objects = named_objects(small, split, row)
            xs, ys = box_centres(small, split, row)
            for relation, centres, sign in [("above", ys, 1), ("below", ys, -1), ("left", xs, 1), ("right", xs, -1)]:
                if relation in words:
                    cut = words.index(relation)
                    before = {o for o in objects[:cut] if o >= 0}
                    after = {o for o in objects[cut:] if o >= 0}
                    gap = min(sign * (centres[b] - centres[a]) for a in before for b in after)
                    assert gap > 25, (words, gap)  # far apart, so the relation is plain to see
                    checked += 1
    assert checked == len(small["train_captions"]) + len(small["val_captions"])


def test_boxes_hold_objects_of_18_to_42_pixels_inside_the_image(small):
    boxes = small["train_boxes"]
    present = boxes[:, :, 0] >= 0
    assert ((present.sum(dim=1) >= 2) & (present.sum(dim=1) <= 3)).all()
    assert (boxes[~present] == -1).all()
    inside = boxes[present]
    assert (inside >= 0).all() and (inside <= 112).all()
    sides = torch.maximum(inside[:, 2] - inside[:, 0], inside[:, 3] - inside[:, 1])
    assert sides.min() >= 18 and sides.max() <= 42


# --- determinism -----------------------------------------------------------


def test_same_seed_gives_the_same_data_and_another_seed_other_data(small, tmp_path):
    again = load_dataset("shapes", data_dir=tmp_path, **SMALL)
    for key, value in small.items():
        if key != "vocab":
            assert torch.equal(value, again[key]), key
    other = load_dataset("shapes", data_dir=tmp_path, seed=1, **SMALL)
    assert not torch.equal(small["train_images"], other["train_images"])


def test_validation_split_does_not_depend_on_the_training_size(small, tmp_path):
    bigger = load_dataset("shapes", data_dir=tmp_path, num_train=60, num_val=12)
    assert torch.equal(small["val_images"], bigger["val_images"])
    assert torch.equal(small["val_captions"], bigger["val_captions"])


def test_training_captions_name_the_top_or_left_group_first(small):
    # one fixed target per training image, in reading order: never "below" or "right of"
    token = small["vocab"]["token_to_idx"]
    assert not torch.isin(small["train_captions"], torch.tensor([token["below"], token["right"]])).any()
    assert torch.isin(small["val_captions"], torch.tensor([token["below"], token["right"]])).any()


def test_more_training_references_give_distinct_rows_per_image(tmp_path):
    data = load_dataset("shapes", data_dir=tmp_path, num_train=10, num_val=2, train_refs=2)
    assert data["train_image_ids"].tolist() == [i for i in range(10) for _ in range(2)]
    pairs = data["train_captions"].view(10, 2, -1)
    assert not (pairs[:, 0] == pairs[:, 1]).all(dim=1).any()


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_train must be a positive integer; got 0"):
        load_dataset("shapes", data_dir=tmp_path, num_train=0)


# --- the cache -------------------------------------------------------------


def test_generated_set_is_cached_under_a_name_made_of_its_parameters(tmp_path, monkeypatch):
    load_dataset("shapes", data_dir=tmp_path, num_train=8, num_val=2, seed=3)
    assert [p.name for p in tmp_path.iterdir()] == [f"shapes-v{shapes.SHAPES_VERSION}-n8-2-r1-4-s3.h5"]

    def fail(*args):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(shapes, "generate_shapes", fail)
    assert len(load_dataset("shapes", data_dir=tmp_path, num_train=8, num_val=2, seed=3)["train_images"]) == 8


def test_data_dir_from_the_environment_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    load_dataset("shapes", num_train=4, num_val=2)
    assert (tmp_path / f"shapes-v{shapes.SHAPES_VERSION}-n4-2-r1-4-s0.h5").is_file()


def cached_file(tmp_path):
    load_dataset("shapes", data_dir=tmp_path, num_train=8, num_val=2)
    return tmp_path / f"shapes-v{shapes.SHAPES_VERSION}-n8-2-r1-4-s0.h5"


def reload_with_warning(tmp_path, match):
    with pytest.warns(UserWarning, match=match):
        data = load_dataset("shapes", data_dir=tmp_path, num_train=8, num_val=2)
    fresh = load_dataset("shapes", data_dir=tmp_path / "fresh", num_train=8, num_val=2)
    assert torch.equal(data["train_images"], fresh["train_images"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [f"shapes-v{shapes.SHAPES_VERSION}-n8-2-r1-4-s0.h5"]


def test_cached_file_with_other_parameters_is_regenerated(tmp_path):
    path = cached_file(tmp_path)
    with h5py.File(path, "a") as h5file:
        h5file.attrs["params"] = h5file.attrs["params"].replace('"seed": 0', '"seed": 5')
    reload_with_warning(tmp_path, "made with parameters")


def test_truncated_cached_file_is_regenerated(tmp_path):
    path = cached_file(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reload_with_warning(tmp_path, "Not using the cached shapes data")


def test_damaged_pixels_in_cached_file_are_detected_and_regenerated(tmp_path):
    path = cached_file(tmp_path)
    with h5py.File(path, "r") as h5file:
        images = h5file["train/images"]
        offset = images.id.get_chunk_info(0).byte_offset  # first stored chunk of pixels
    raw = bytearray(path.read_bytes())
    raw[offset + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    reload_with_warning(tmp_path, "damaged")


def test_no_temporary_files_are_left_after_generation(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("shapes", data_dir=tmp_path, num_train=4, num_val=2)
    assert [p.name for p in tmp_path.iterdir()] == [f"shapes-v{shapes.SHAPES_VERSION}-n4-2-r1-4-s0.h5"]


# --- rendering details -----------------------------------------------------


def test_each_shape_fills_a_sensible_part_of_its_radius_square():
    size = 41
    grid = np.arange(size, dtype=np.float32) - size // 2
    dx, dy = np.meshgrid(grid, grid)
    count = len(shapes.SHAPE_NAMES)
    masks = shapes.shape_masks(
        np.arange(count),
        np.broadcast_to(dx, (count, size, size)),
        np.broadcast_to(dy, (count, size, size)),
        np.full(count, 15.0),
    )
    fill = masks.mean(axis=(1, 2)) * size**2 / (2 * 15) ** 2
    assert ((fill > 0.35) & (fill < 0.85)).all(), dict(zip(shapes.SHAPE_NAMES, fill))
    assert len({m.tobytes() for m in masks}) == count  # all different
