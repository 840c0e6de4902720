"""The common data format: validation, the loader, HDF5 files, grouping by image."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from _data_fakes import fake_data
from helper.common.files import atomic_output
from helper.data.datasets import load_coco_captions, load_dataset
from helper.data.format import START, check_format, image_ids_from_pixels, make_vocab, references_by_image
from helper.data.storage import DATA_DIR_ENV, H5SplitWriter, default_data_dir, read_h5, write_h5_attrs


def save_pt(data, path):
    torch.save(data, path)
    return path


# --- the loader ------------------------------------------------------------


def test_load_dataset_reads_a_pt_file_in_the_common_format(tmp_path):
    data = fake_data()
    loaded = load_dataset(save_pt(data, tmp_path / "mine.pt"))
    for key in ["train_images", "train_captions", "train_image_ids", "val_images", "val_captions"]:
        assert torch.equal(loaded[key], data[key])
    assert loaded["vocab"] == data["vocab"]


def test_pt_file_without_image_ids_gets_ids_from_identical_pixels(tmp_path):
    data = fake_data(num_train=4, with_ids=False)
    data["train_images"][2] = data["train_images"][0]  # the same image, with another caption
    loaded = load_dataset(save_pt(data, tmp_path / "coco_like.pt"))
    assert loaded["train_image_ids"].tolist() == [0, 1, 0, 2]


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown data set 'imagenet'.*shapes.*coco"):
        load_dataset("imagenet")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_dataset(tmp_path / "nothing.pt")


def test_truncated_pt_file_is_refused_with_its_name(tmp_path):
    path = save_pt(fake_data(), tmp_path / "cut.pt")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="cut.pt.*truncated or corrupt"):
        load_dataset(path)


def test_pt_file_holding_other_objects_than_tensors_is_refused(tmp_path):
    data = fake_data()
    data["val_images"] = data["val_images"].numpy()
    path = save_pt(data, tmp_path / "numpy.pt")
    with pytest.raises(ValueError, match="numpy.pt: holds objects other than tensors"):
        load_dataset(path)


def test_options_for_other_datasets_than_shapes_are_refused(tmp_path):
    path = save_pt(fake_data(), tmp_path / "mine.pt")
    with pytest.raises(TypeError, match="shapes"):
        load_dataset(path, num_train=5)


def test_coco_without_file_and_without_download_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "coco.pt")):
        load_coco_captions(tmp_path / "coco.pt", download=False)


def test_load_coco_captions_prints_keys_like_the_assignment(tmp_path, capsys):
    load_coco_captions(save_pt(fake_data(), tmp_path / "coco.pt"), download=False)
    printed = capsys.readouterr().out
    assert "train_images (6, 3, 112, 112) torch.uint8" in printed
    assert "vocab keys ['idx_to_token', 'token_to_idx']" in printed


def test_data_dir_comes_from_the_environment_or_the_repo(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert default_data_dir() == Path(__file__).resolve().parents[3] / "datasets"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path


# --- validation ------------------------------------------------------------


def broken(change):
    data = fake_data()
    change(data)
    return data


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("val_captions"), r"missing keys \['val_captions'\]"),
        (lambda d: d.update(train_images=d["train_images"].float()), "train_images must have dtype torch.uint8"),
        (lambda d: d.update(train_captions=d["train_captions"].int()), "train_captions must have dtype torch.int64"),
        (lambda d: d.update(val_images=d["val_images"][:, :, :64]), r"val_images must have shape \(N, 3, 112, 112\)"),
        (lambda d: d.update(train_captions=d["train_captions"][:, :16]), r"train_captions must have shape \(N, 17\)"),
        (lambda d: d.update(train_captions=d["train_captions"][:5]), "one row each.*'images': 6, 'captions': 5"),
        (lambda d: d.update(val_images="pixels"), "val_images must be a torch.Tensor; got str"),
        (lambda d: d["train_captions"].__setitem__((1, 0), 5), "must start with <START>.*row 1"),
        (lambda d: d["train_captions"].__setitem__((0, 2), 99), "indices in.*vocabulary has 9 tokens"),
        (
            lambda d: d.update(vocab=make_vocab(["a"]) | {"idx_to_token": ["<START>", "<NULL>", "<END>", "<UNK>"]}),
            "must start with",
        ),
        (lambda d: d["vocab"]["token_to_idx"].update(cat=1), "not the inverse"),
        (lambda d: d.update(vocab=["<NULL>"]), "'vocab' must be a dict"),
    ],
    ids=[
        "missing-key",
        "float-images",
        "int32-captions",
        "small-images",
        "short-captions",
        "mismatched-lengths",
        "numpy-array",
        "no-start-token",
        "index-outside-vocab",
        "specials-out-of-order",
        "inconsistent-vocab",
        "vocab-not-a-dict",
    ],
)
def test_malformed_data_is_refused_naming_the_file_and_the_problem(tmp_path, change, message):
    path = save_pt(broken(change), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(path)
    assert "bad.pt" in str(error.value)


def test_grounding_keys_are_checked_when_present():
    data = fake_data()
    data["train_boxes"] = torch.zeros(6, 2, 4)
    data["train_word_objects"] = torch.full((6, 17), -1, dtype=torch.int64)
    check_format(data)
    data["train_word_objects"][0, 3] = 2  # only objects 0 and 1 exist
    with pytest.raises(ValueError, match="word_objects must hold -1 or an object index below 2"):
        check_format(data, "grounded")


# --- grouping rows by image ------------------------------------------------


def test_references_by_image_gathers_all_captions_of_each_image():
    captions = torch.arange(5 * 3).view(5, 3)
    first_rows, references = references_by_image(torch.tensor([7, 3, 7, 7, 3]), captions)
    assert first_rows.tolist() == [0, 1]
    assert torch.equal(references[0], captions[[0, 2, 3]])
    assert torch.equal(references[1], captions[[1, 4]])


def test_references_by_image_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="same N"):
        references_by_image(torch.zeros(3, dtype=torch.int64), torch.zeros(4, 17, dtype=torch.int64))


def test_image_ids_from_pixels_count_distinct_images_in_order():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    images[1] = 1
    images[3] = 1
    assert image_ids_from_pixels(images).tolist() == [0, 1, 0, 1]


# --- HDF5 files and safe writing -------------------------------------------


def write_small_h5(path, rows_per_image=2):
    """Two images per split, each with rows_per_image caption rows."""
    data = fake_data(num_train=2, num_val=2)
    with h5py.File(path, "w") as h5file:
        write_h5_attrs(h5file, data["vocab"], {"made_by": "test"})
        for split in ["train", "val"]:
            writer = H5SplitWriter(h5file, split)
            first = writer.add_images(data[f"{split}_images"].numpy(), np.array([10, 20]))
            captions = data[f"{split}_captions"].numpy().repeat(rows_per_image, axis=0)
            writer.add_captions(captions, first + np.arange(2).repeat(rows_per_image))
    return data


def test_h5_file_with_shared_images_loads_one_row_per_caption(tmp_path):
    data = write_small_h5(tmp_path / "small.h5", rows_per_image=3)
    loaded = load_dataset(tmp_path / "small.h5")
    assert loaded["val_images"].shape == (6, 3, 112, 112)
    assert loaded["val_image_ids"].tolist() == [10, 10, 10, 20, 20, 20]
    assert torch.equal(loaded["val_images"][3], data["val_images"][1])
    assert loaded["vocab"] == data["vocab"]


def test_truncated_h5_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "cut.h5"
    write_small_h5(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.h5"):
        load_dataset(path)


def test_h5_file_of_another_format_is_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5file:
        h5file["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="other.h5.*expected a 'captioning-h5' file"):
        read_h5(path)


def test_h5_file_with_index_outside_its_images_is_refused(tmp_path):
    path = tmp_path / "bad_index.h5"
    write_small_h5(path)
    with h5py.File(path, "a") as h5file:
        h5file["train/image_index"][0] = 5
    with pytest.raises(ValueError, match="bad_index.h5.*image_index points outside"):
        read_h5(path)


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "data.bin"
    path.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_atomic_output_replaces_the_file_when_writing_succeeds(tmp_path):
    path = tmp_path / "sub" / "data.bin"
    with atomic_output(path) as tmp:
        tmp.write_text("new")
        assert not path.exists()
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.bin"]


def test_stored_vocab_is_json_text(tmp_path):
    write_small_h5(tmp_path / "small.h5")
    with h5py.File(tmp_path / "small.h5", "r") as h5file:
        assert json.loads(h5file.attrs["vocab"])[:2] == ["<NULL>", "<START>"]
        assert h5file["train/captions"][0, 0] == START
