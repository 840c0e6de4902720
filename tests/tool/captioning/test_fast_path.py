"""
The fast path (helper/captioning/fast_path.py): chosen on a CPU by timing the
candidates beside the plain loop, never slower than it, cached per machine and
workload, and kept by a resumed run.
"""
import json

import pytest
import torch
from _cli_data import TINY, write_tiny_data

from helper.captioning import fast_path as fp
from helper.captioning import run as train_cli
from helper.captioning.checkpoint import load_checkpoint
from helper.captioning.features import FeatureLookup, index_images, swap_image_encoder
from helper.data.format import NULL

FUSED = fp.FastPath(channels_last=True, fused=True)
BF16 = fp.FastPath("bfloat16", channels_last=True, fused=True)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of the test's own."""
    monkeypatch.setenv("CAPTIONING_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fast-paths.json"


def decoder_on_features(impl, num_images=8):
    """An attention decoder on random frozen features, its index images and captions."""
    torch.manual_seed(0)
    model = impl.CaptioningRNN({"<NULL>": 0, "<START>": 1, "<END>": 2, "a": 3}, input_dim=400, wordvec_dim=8,
                               hidden_dim=16, cell_type="attn", image_encoder_pretrained=False, ignore_index=NULL)
    swap_image_encoder(model, FeatureLookup(torch.randn(num_images, 400, 4, 4)))
    captions = torch.randint(0, 4, (num_images, 17))
    return model, index_images(torch.arange(num_images)), captions


def test_a_candidate_is_chosen_only_when_it_is_measurably_faster_than_the_plain_loop():
    assert fp.fastest({fp.PLAIN: 1.0, FUSED: 0.5, BF16: 0.8}) == FUSED
    assert fp.fastest({fp.PLAIN: 1.0, FUSED: 0.99, BF16: 1.5}) == fp.PLAIN  # within MARGIN: noise
    assert fp.fastest({fp.PLAIN: 1.0, FUSED: 1.2, BF16: 1.3}) == fp.PLAIN  # slower: never


def test_the_candidates_include_bfloat16_only_where_the_cpu_has_its_kernels(monkeypatch):
    monkeypatch.setattr(fp, "autocast_dtype", lambda device: None)
    assert fp.candidates(torch.device("cpu")) == [fp.PLAIN, FUSED]
    monkeypatch.setattr(fp, "autocast_dtype", lambda device: torch.bfloat16)
    assert fp.candidates(torch.device("cpu")) == [fp.PLAIN, FUSED, BF16]


def test_timing_the_candidates_leaves_the_model_as_it_was(impl):
    model, images, captions = decoder_on_features(impl)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    seconds = fp.time_paths(model, images, captions, [fp.PLAIN, FUSED])
    assert set(seconds) == {fp.PLAIN, FUSED} and all(s > 0 for s in seconds.values())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_the_choice_is_measured_once_per_machine_and_workload_then_read_back(impl, cache, monkeypatch):
    model, images, captions = decoder_on_features(impl)
    measured = []

    def timing(model, images, captions, paths):
        measured.append(tuple(images.shape))
        return {path: 0.5 if path == FUSED else 1.0 for path in paths}

    monkeypatch.setattr(fp, "time_paths", timing)
    cpu = torch.device("cpu")
    assert fp.choose_path(model, cpu, images, captions) == FUSED
    assert fp.choose_path(model, cpu, images, captions) == FUSED
    assert len(measured) == 1  # read back from the cache: the same path whatever the load now
    assert fp.choose_path(model, cpu, images[:4], captions[:4]) == FUSED
    assert len(measured) == 2  # another minibatch: another workload, measured
    assert len(json.loads(cache.read_text())) == 2

    cache.write_text("{not json")  # damaged: measured anew, never an error
    assert fp.choose_path(model, cpu, images, captions) == FUSED and len(measured) == 3


def test_on_cuda_the_path_is_the_rule_unmeasured(monkeypatch):
    monkeypatch.setattr(fp, "time_paths", lambda *args: pytest.fail("measured on CUDA"))
    monkeypatch.setattr(fp, "autocast_dtype", lambda device: torch.float16)
    path = fp.choose_path(torch.nn.Linear(1, 1), torch.device("cuda"), torch.zeros(2, 3, 32, 32), torch.zeros(2, 17))
    assert path == fp.FastPath("float16", channels_last=True, fused=True)


@pytest.mark.slow  # three training runs
def test_a_run_records_its_path_and_a_resumed_run_keeps_it(impl, cache, tmp_path, monkeypatch):
    data = write_tiny_data(tmp_path / "tiny.pt", num_train=8)
    out = tmp_path / "run"
    fast = [option for option in TINY if option != "--no-fast"]
    options = ["--cell", "rnn", "--data", str(data), "--out", str(out), *fast, "--epochs", "1"]
    monkeypatch.setattr(fp, "time_paths", lambda model, images, captions, paths: {p: 0.5 if p == FUSED else 1 for p in paths})
    train_cli.train(options)
    assert load_checkpoint(out / "last.pt")["fast_path"] == {"amp": None, "channels_last": True, "fused": True}

    cache.write_text("{}")  # the machine would now choose the plain loop...
    monkeypatch.setattr(fp, "time_paths", lambda model, images, captions, paths: {p: 1 if p == FUSED else 0.5 for p in paths})
    train_cli.train(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert load_checkpoint(out / "last.pt")["fast_path"] == {"amp": None, "channels_last": True, "fused": True}  # ...kept
    train_cli.train([*options, "--force"])
    assert load_checkpoint(out / "last.pt")["fast_path"] == {"amp": None, "channels_last": False, "fused": False}
