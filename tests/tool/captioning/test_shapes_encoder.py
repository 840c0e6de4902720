"""
The encoder pretrained on the shapes data (helper/captioning/shapes_encoder.py):
its labels say what the generator put where, it learns from training images
alone, its cache is used only when it checks, and helper.train starts from it
on "shapes" by default.
"""
import argparse
import warnings

import numpy as np
import pytest
import torch

from helper.captioning import shapes_encoder as se
from helper.captioning.checkpoint import load_checkpoint
from helper.captioning.config import RunConfig, build_parser
from helper.captioning.run import train
from helper.data.shapes import COLOUR_NAMES, VOCAB, caption_rows, load_shapes, render_scenes, sample_scenes

TINY = se.PretrainConfig(images=24, epochs=1, batch_size=8, learning_rate=1e-3, threads=1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small shapes data set (40 training and 8 validation images) and its folder."""
    folder = tmp_path_factory.mktemp("shapes")
    return load_shapes(num_train=40, num_val=8, data_dir=folder), folder


def trunk_of(*args, **kwargs):
    """The pretrained trunk's weights (see pretrained_shapes_encoder)."""
    return se.pretrained_shapes_encoder(*args, **kwargs)["trunk"]


def test_object_attributes_are_what_the_generator_drew():
    rng = np.random.default_rng(3)
    scenes = sample_scenes(30, rng)
    captions, index, word_objects = caption_rows(scenes, num_refs=1)
    attributes = se.object_attributes(torch.from_numpy(captions), torch.from_numpy(word_objects), VOCAB)
    for k, name in enumerate(["colour", "shape", "size"]):
        assert torch.equal(attributes[..., k], torch.from_numpy(scenes[name][index])), name


def test_each_cell_is_labelled_with_the_object_covering_most_of_it():
    # One large object over the top-left 2x2 cells (and 8 pixels into the third column), one
    # small object inside cell (3, 3); no object at all in the third image slot.
    boxes = torch.tensor([[[0.0, 0.0, 64.0, 56.0], [86.0, 86.0, 110.0, 110.0], [-1.0, -1.0, -1.0, -1.0]]])
    attributes = torch.tensor([[[2, 0, 1], [5, 2, 0], [-1, -1, -1]]])  # colour, shape, size
    labels = se.cell_labels(boxes, attributes, image_size=112)
    assert labels.shape == (1, 3, 4, 4)
    expected_colour = torch.zeros(4, 4, dtype=torch.int64)
    expected_colour[:2, :2] = 3  # 8 x 28 = 224 pixels of the box in column 2: at least MIN_COVER
    expected_colour[:2, 2] = 3
    expected_colour[3, 3] = 6
    assert torch.equal(labels[0, 0], expected_colour)
    assert labels[0, 1, 3, 3] == 3 and labels[0, 2, 3, 3] == 1 and labels[0, 2, 0, 0] == 2


def test_a_cell_that_an_object_barely_touches_stays_empty():
    boxes = torch.tensor([[[0.0, 0.0, 31.0, 28.0]]])  # 3 x 28 = 84 pixels in cell (0, 1): under MIN_COVER
    labels = se.cell_labels(boxes, torch.tensor([[[0, 1, 1]]]), image_size=112)
    assert labels[0, 0, 0, 0] == 1 and labels[0, 0, 0, 1] == 0


class TrainingSplitOnly(dict):
    """A data dict whose validation keys cannot be read."""

    def __getitem__(self, key):
        assert not key.startswith("val_"), f"the pretraining read {key}"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert not key.startswith("val_"), f"the pretraining read {key}"
        return super().get(key, default)


def test_pretraining_never_sees_a_validation_image(shapes, tmp_path, impl):
    data, _ = shapes
    seen = []

    class RecordingModule:  # the captioning module, with an encoder that notes every image it is given
        class ImageEncoder(impl.ImageEncoder):
            def forward(self, images):
                seen.append(images.detach().contiguous(memory_format=torch.contiguous_format).clone())
                return super().forward(images)

    trunk_of(TrainingSplitOnly(data), TINY, tmp_path, progress=False, module=RecordingModule)
    seen = torch.cat(seen)
    assert len(seen) == TINY.images  # one epoch over the first 24 training images
    flat = lambda images: {bytes(image.numpy().tobytes()) for image in images}  # noqa: E731
    assert flat(seen) <= flat(data["train_images"])
    assert not flat(seen) & flat(data["val_images"])


@pytest.mark.slow  # pretrains three times
def test_the_cache_is_used_when_it_checks_and_replaced_when_not(shapes, tmp_path, monkeypatch, impl):
    data, _ = shapes
    first = trunk_of(data, TINY, tmp_path, progress=False, module=impl)
    (path,) = tmp_path.glob("shapes-encoder-v1-*.pt")

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretrained again although the cache checks")

    with monkeypatch.context() as patch:
        patch.setattr(se, "pretrain_trunk", no_pretraining)
        again = trunk_of(data, TINY, tmp_path, progress=False, module=impl)
    assert all(torch.equal(first[k], again[k]) for k in first)

    record = torch.load(path, weights_only=True)
    record["trunk"]["stem.0.weight"][0, 0, 0, 0] += 1.0  # weights that no longer match their digest
    torch.save(record, path)
    with pytest.warns(UserWarning, match="do not match their recorded digest"):
        replaced = trunk_of(data, TINY, tmp_path, progress=False, module=impl)
    assert torch.equal(replaced["stem.0.weight"], first["stem.0.weight"])  # pretrained again, the same way

    path.write_bytes(path.read_bytes()[:1000])  # cut short
    with pytest.warns(UserWarning, match="Pretraining it again"):
        trunk_of(data, TINY, tmp_path, progress=False, module=impl)
    assert se.weights_digest(torch.load(path, weights_only=True)["trunk"]) == se.weights_digest(first)

    other = se.PretrainConfig(**{**TINY.__dict__, "seed": 1})
    trunk_of(data, other, tmp_path, progress=False, module=impl)
    assert len(list(tmp_path.glob("shapes-encoder-v1-*.pt"))) == 2  # other settings: a file of their own


def test_a_data_set_without_boxes_is_refused(tmp_path):
    with pytest.raises(ValueError, match="object boxes"):
        trunk_of({"train_images": torch.zeros(1, 3, 112, 112)}, TINY, tmp_path, progress=False)


def test_load_trunk_fills_an_encoder_that_keeps_the_regnet_twice(impl):
    import torchvision
    from torchvision.models import feature_extraction

    class StandardEncoder(torch.nn.Module):  # the standard assignment's layout: the model and its extractor
        def __init__(self):
            super().__init__()
            self.cnn = torchvision.models.regnet_x_400mf(weights=None)
            self.backbone = feature_extraction.create_feature_extractor(self.cnn, {"trunk_output.block4": "c5"})

    torch.manual_seed(0)
    source = impl.ImageEncoder(pretrained=False, verbose=False)
    state = se.trunk_state(source)
    target = StandardEncoder()
    se.load_trunk(target, state)
    for name, value in state.items():
        for trunk in (target.cnn, target.backbone):  # both hold the weights (they share them)
            assert torch.equal(trunk.get_submodule(name.rsplit(".", 1)[0]).state_dict()[name.rsplit(".", 1)[1]], value)
    with pytest.raises(ValueError, match="no RegNet trunk"):
        se.load_trunk(torch.nn.Linear(2, 2), state)


def _config(*argv) -> RunConfig:
    return RunConfig.from_args(build_parser().parse_args(["--cell", "attn", "--out", "x", *argv]), torch.device("cpu"))


def test_train_starts_from_the_shapes_encoder_on_shapes_by_default():
    assert _config().encoder == "shapes"
    assert _config("--data", "coco").encoder == "random"
    assert _config("--encoder", "random").encoder == "random"
    assert _config("--pretrained").encoder == "imagenet"
    old = {**_config().as_dict(), "pretrained": True}
    del old["encoder"]
    assert RunConfig.resumed(old, argparse.Namespace(out="x")).encoder == "imagenet"  # a run from before --encoder


@pytest.mark.slow  # a training run
def test_a_run_on_shapes_trains_from_the_cached_pretrained_encoder(shapes, tmp_path, monkeypatch, impl):
    data, folder = shapes
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(tmp_path))
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(["--cell", "lstm", "--data", "shapes", "--out", str(out), "--epochs", "1", "--hidden-dim", "16",
               "--wordvec-dim", "8", "--no-progress", "--no-fast", "--threads", "1", "--pretrain-images", "24"],
              data=data)
    (cache,) = tmp_path.glob("shapes-encoder-v1-*.pt")
    trunk = torch.load(cache, weights_only=True)["trunk"]
    weights = load_checkpoint(out / "last.pt")["model"]
    config = load_checkpoint(out / "last.pt")["config"]
    assert config["encoder"] == "shapes" and config["pretrain_images"] == 24
    assert torch.load(cache, weights_only=True)["config"]["images"] == 24
    for name, value in trunk.items():  # the frozen encoder, as pretrained
        matches = [k for k in weights if k.endswith("." + name)]  # once, or twice where the encoder keeps it twice
        assert matches and all(torch.equal(weights[k], value) for k in matches), name
