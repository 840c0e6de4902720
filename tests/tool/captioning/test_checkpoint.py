"""Checkpoint files: atomic writing, validation of what is read, random states."""
import random

import numpy as np
import pytest
import torch

from _cli_data import tiny_checkpoint
from helper.captioning.checkpoint import FORMAT, build_model, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_checkpoint_round_trip_keeps_contents_and_leaves_no_temporary_file(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "config": {"cell": "rnn", "lr": 1e-3}, "epoch": 3}
    path = save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["config"] == state["config"] and loaded["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 2


def test_missing_checkpoint_is_a_file_not_found_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_run_folder_is_not_a_checkpoint_and_the_error_names_its_files(tmp_path):
    save_checkpoint(tmp_path / "best.pt", {"epoch": 1})
    with pytest.raises(IsADirectoryError, match="best.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint at all", b"", b"PK\x03\x04 truncated zip"],
    ids=["text", "empty", "truncated"],
)
def test_unreadable_file_is_rejected_as_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "foreign.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="foreign.pt is not a checkpoint"):
        load_checkpoint(path)


def test_another_programs_torch_file_is_rejected_as_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="expected format"):
        load_checkpoint(path)


def test_checkpoint_of_a_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "format_version": 99}, path)
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(path)


def test_rng_state_restores_python_numpy_and_torch_draws():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_rng_state_survives_saving_and_weights_only_loading(tmp_path):
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = torch.rand(4)
    set_rng_state(load_checkpoint(path)["rng"])
    torch.manual_seed(123)  # anything
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_build_model_restores_the_saved_weights(impl, tmp_path):
    path = tiny_checkpoint(impl, tmp_path / "model.pt", cell="lstm")
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint)
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["model"][name]), name
