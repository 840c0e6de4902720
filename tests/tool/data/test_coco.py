"""COCO: the coco.pt download (served locally, never from the internet) and the raw-COCO builder."""

import http.server
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from _data_fakes import fake_data
from _range_server import CocoServer
from helper.data import coco, datasets
from helper.data.coco import CocoExpectation, DownloadError, build_coco_h5, download_coco, tokenize
from helper.data.datasets import load_dataset
from helper.data.format import END, NULL, START, UNK

# --- a local server for fake coco.pt files ---------------------------------


@pytest.fixture
def server():
    with CocoServer() as served:
        yield served


def fake_coco_bytes(tmp_path, data=None):
    path = tmp_path / "fake_source.pt"
    torch.save(data if data is not None else fake_data(with_ids=False), path)
    return path.read_bytes()


SMALL_EXPECTATION = CocoExpectation(num_train=6, num_val=4, vocab_size=9, min_bytes=100_000, max_bytes=2_000_000)


def fetch(server, target, **kwargs):
    options = dict(url=server.url, expected=SMALL_EXPECTATION, timeout=5, progress=False)
    options.update(kwargs)
    return download_coco(target, **options)


# --- download ---------------------------------------------------------------


def test_download_puts_the_verified_file_in_place(server, tmp_path):
    server.payload = fake_coco_bytes(tmp_path)
    target = tmp_path / "data" / "coco.pt"
    assert fetch(server, target) == target
    assert target.read_bytes() == server.payload
    assert not (tmp_path / "data" / "coco.pt.part").exists()
    assert server.ranges == [None]
    data = load_dataset("coco", data_dir=tmp_path / "data")
    assert data["train_images"].shape == (6, 3, 112, 112)
    assert data["train_image_ids"].tolist() == list(range(6))


def test_interrupted_download_resumes_from_the_part_file(server, tmp_path):
    server.payload = fake_coco_bytes(tmp_path)
    server.cut_after = 50_000
    target = tmp_path / "coco.pt"
    with pytest.raises(DownloadError, match=f"place it at {target}.*50,000 bytes received so far"):
        fetch(server, target)
    assert not target.exists()
    assert (tmp_path / "coco.pt.part").stat().st_size == 50_000

    fetch(server, target)
    assert server.ranges == [None, "bytes=50000-"]
    assert target.read_bytes() == server.payload
    assert not (tmp_path / "coco.pt.part").exists()


def test_complete_part_file_is_verified_without_fetching_again(server, tmp_path):
    server.payload = fake_coco_bytes(tmp_path)
    (tmp_path / "coco.pt.part").write_bytes(server.payload)
    fetch(server, tmp_path / "coco.pt")
    assert server.ranges == [f"bytes={len(server.payload)}-"]  # answered 416: nothing left
    assert (tmp_path / "coco.pt").read_bytes() == server.payload


def test_server_without_range_support_restarts_the_download(server, tmp_path):
    server.payload = fake_coco_bytes(tmp_path)
    server.honour_range = False
    (tmp_path / "coco.pt.part").write_bytes(b"stale bytes of another attempt")
    fetch(server, tmp_path / "coco.pt")
    assert (tmp_path / "coco.pt").read_bytes() == server.payload


@pytest.mark.parametrize(
    "make_payload, message",
    [
        (lambda tmp: b"<html>Not found</html>" * 10_000, "cannot be read by torch.load"),
        (lambda tmp: fake_coco_bytes(tmp, {"train_images": torch.zeros(200_000, dtype=torch.uint8)}), "missing keys"),
        (lambda tmp: fake_coco_bytes(tmp, fake_data(num_train=5, with_ids=False)), "expected .*'train': 6"),
        (lambda tmp: b"x" * 10, "10 bytes; a complete coco.pt has between 100,000"),
    ],
    ids=["html-page", "missing-keys", "wrong-count", "too-small"],
)
def test_failed_verification_leaves_no_file(server, tmp_path, make_payload, message):
    server.payload = make_payload(tmp_path)
    with pytest.raises(ValueError, match=message):
        fetch(server, tmp_path / "coco.pt")
    assert not (tmp_path / "coco.pt").exists()
    assert not (tmp_path / "coco.pt.part").exists()


def test_wrong_vocabulary_size_fails_verification(server, tmp_path):
    server.payload = fake_coco_bytes(tmp_path)
    with pytest.raises(ValueError, match="vocabulary of 864 tokens; got 9"):
        fetch(server, tmp_path / "coco.pt", expected=CocoExpectation(6, 4, 864, 0, 10**9))


def test_default_expectation_is_the_assignment_file():
    expected = CocoExpectation()
    assert (expected.num_train, expected.num_val, expected.vocab_size) == (10000, 500, 864)
    image_bytes = (10000 + 500) * 3 * 112 * 112
    assert expected.min_bytes < image_bytes < expected.max_bytes


def test_no_network_fails_fast_naming_the_file_to_place_by_hand(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    target = tmp_path / "coco.pt"
    with pytest.raises(DownloadError, match=f"Name or service not known.*place it at {target}"):
        download_coco(target, progress=False)
    assert not target.exists()


def test_refused_connection_fails_within_seconds(tmp_path):
    closed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens on this port now
    started = time.monotonic()
    with pytest.raises(DownloadError, match="coco.pt"):
        download_coco(tmp_path / "coco.pt", url=f"http://127.0.0.1:{port}/coco.pt", timeout=2, progress=False)
    assert time.monotonic() - started < 10


def test_load_dataset_coco_downloads_only_when_the_file_is_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "download_coco", lambda path: calls.append(path) or torch.save(fake_data(), path))
    load_dataset("coco", data_dir=tmp_path)
    load_dataset("coco", data_dir=tmp_path)
    assert calls == [tmp_path / "coco.pt"]


def test_load_dataset_coco_offline_names_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setattr(coco, "fetch_with_resume", lambda *args: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DownloadError, match=f"place it at {tmp_path / 'coco.pt'}"):
        load_dataset("coco", data_dir=tmp_path)


# --- the raw-COCO builder --------------------------------------------------

TRAIN_CAPTIONS = {
    1: ["A dog runs on the grass.", "The DOG, running!"],
    2: ["A cat sits on a mat", "a cat on the mat sleeps in the sun with one very big and rather tall hat on"],
    3: ["A dog and a cat."],
}
VAL_CAPTIONS = {7: ["A zebra grazes."], 5: ["Two dogs, one cat."]}


def make_coco_tree(root):
    """A tiny COCO 2014 release: JPEGs of odd sizes and caption JSON files."""
    (root / "annotations").mkdir(parents=True)
    colours = iter([(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)])
    for split, captions in [("train", TRAIN_CAPTIONS), ("val", VAL_CAPTIONS)]:
        (root / f"{split}2014").mkdir()
        images, annotations = [], []
        for image_id, texts in captions.items():
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            Image.new("RGB", (64 + 16 * image_id, 48), next(colours)).save(root / f"{split}2014" / name)
            images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
            for text in texts:
                annotations.append({"id": 100 * image_id + len(annotations), "image_id": image_id, "caption": text})
        with open(root / "annotations" / f"captions_{split}2014.json", "w") as f:
            json.dump({"images": images, "annotations": annotations}, f)


@pytest.fixture
def built(tmp_path):
    make_coco_tree(tmp_path / "coco")
    return build_coco_h5(tmp_path / "coco", tmp_path / "coco2014.h5", min_count=2, progress=False)


def test_tokenize_lowercases_strips_punctuation_and_cuts_to_15_words():
    assert tokenize("The DOG, running!") == ["the", "dog", "running"]
    assert len(tokenize(" ".join(["word"] * 20))) == 15


def test_builder_writes_one_row_per_caption_and_rare_words_as_unk(built):
    data = load_dataset(built)
    itos = data["vocab"]["idx_to_token"]
    # words seen at least twice in the training captions (the long one cut to
    # 15 words), most frequent first, ties alphabetical
    assert itos[4:] == ["a", "the", "cat", "dog", "on", "and", "mat"]
    assert data["train_image_ids"].tolist() == [1, 1, 2, 2, 3]
    assert data["val_image_ids"].tolist() == [5, 7]  # by image id
    words = [itos[i] for i in data["train_captions"][0].tolist()]
    assert words == ["<START>", "a", "dog", "<UNK>", "on", "the", "<UNK>", "<END>"] + ["<NULL>"] * 9
    long_caption = data["train_captions"][3]
    assert long_caption[0] == START and long_caption[16] == END and (long_caption != NULL).all()
    cat = data["vocab"]["token_to_idx"]["cat"]
    assert data["val_captions"][0, 1:6].tolist() == [UNK, UNK, UNK, cat, END]  # "two dogs one cat"


def test_builder_resizes_images_to_112_and_keeps_their_colours(built):
    data = load_dataset(built)
    assert data["train_images"].shape == (5, 3, 112, 112)
    mean = data["train_images"][0].float().mean(dim=(1, 2))
    assert mean[0] > 150 and mean[1] < 50 and mean[2] < 50  # image 1 was red
    assert torch.equal(data["train_images"][0], data["train_images"][1])  # same image, two captions


def test_builder_limits_images_per_split(tmp_path):
    make_coco_tree(tmp_path / "coco")
    data = load_dataset(
        build_coco_h5(tmp_path / "coco", tmp_path / "two.h5", min_count=1, max_images=2, progress=False)
    )
    assert data["train_image_ids"].tolist() == [1, 1, 2, 2]


def test_builder_names_a_missing_image_and_writes_nothing(tmp_path):
    make_coco_tree(tmp_path / "coco")
    missing = tmp_path / "coco" / "val2014" / "COCO_val2014_000000000007.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_coco_h5(tmp_path / "coco", tmp_path / "out.h5", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


def test_builder_names_a_missing_captions_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="captions_train2014.json"):
        build_coco_h5(tmp_path / "empty", tmp_path / "out.h5", progress=False)


def test_builder_refuses_a_json_that_is_not_coco_captions(tmp_path):
    make_coco_tree(tmp_path / "coco")
    (tmp_path / "coco" / "annotations" / "captions_train2014.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="captions_train2014.json: not a COCO captions file"):
        build_coco_h5(tmp_path / "coco", tmp_path / "out.h5", progress=False)


def test_command_line_builds_a_file(tmp_path, capsys):
    make_coco_tree(tmp_path / "coco")
    coco.main(["build", str(tmp_path / "coco"), str(tmp_path / "cli.h5"), "--min-count", "1"])
    assert str(tmp_path / "cli.h5") in capsys.readouterr().out
    assert len(load_dataset(tmp_path / "cli.h5")["val_captions"]) == 2
    assert np.isin(load_dataset(tmp_path / "cli.h5")["train_captions"], [UNK]).sum() == 0
