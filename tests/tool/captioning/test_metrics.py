"""
Caption metrics (helper.captioning.metrics): BLEU and CIDEr-D on cases worked out by
hand, the grouping of caption rows by image, and attention grounding on
hand-made attention maps.
"""
import math

import pytest
import torch
from torch import nn

from helper.captioning.metrics import (
    caption_metrics,
    evaluate_captions,
    exact_match,
    grounding_hits,
    grounding_score,
    resolve_word_objects,
    tokenize,
)

# ---------------------------------------------------------------------------
# Tokenizing


def test_tokenize_lowercases_and_drops_punctuation_and_special_tokens():
    assert tokenize("<START> A man's DOG, running!  <END> <NULL> <NULL>") == "a man s dog running"
    assert tokenize("<UNK> sits") == "unk sits"


def test_special_tokens_and_case_do_not_change_the_scores():
    plain = caption_metrics(["a red circle above a blue square"], [["a red circle above a blue square"]])
    marked = caption_metrics(["<START> A red circle above a blue square . <END>"], [["<START> a red circle above a blue square <END> <NULL>"]])
    assert marked == plain


# ---------------------------------------------------------------------------
# BLEU and CIDEr-D

DISTINCT = ["a red circle above a blue square", "a small green cross left of a white diamond", "two yellow triangles side by side"]


def test_perfect_predictions_score_one_on_bleu_and_ten_on_cider():
    metrics = caption_metrics(DISTINCT, [[c] for c in DISTINCT])
    for n in range(1, 5):
        assert metrics[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    # CIDEr-D is 10 x the mean over n = 1..4 of cosine similarities, each 1 here.
    assert metrics["cider"] == pytest.approx(10.0, abs=1e-6)


def test_a_prediction_sharing_no_word_with_its_references_scores_zero():
    metrics = caption_metrics(["zebra zebra zebra zebra zebra zebra"] * 3, [[c] for c in DISTINCT])
    assert all(value == pytest.approx(0.0, abs=1e-6) for value in metrics.values())


def test_bleu_matches_the_hand_computed_value():
    metrics = caption_metrics(["a cat sat on the mat"], [["the cat is on the mat", "one dog"]])
    # Clipped unigram matches: cat, on, the, mat = 4 of 6; bigram matches:
    # "on the", "the mat" = 2 of 5; the closest reference has 6 words too,
    # so no brevity penalty.
    assert metrics["bleu1"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["bleu2"] == pytest.approx(math.sqrt(4 / 6 * 2 / 5), abs=1e-6)


def test_bleu_applies_the_brevity_penalty_against_the_closest_reference():
    # 2 words, all right; the closest reference has 6: BP = exp(1 - 6 / 2).
    metrics = caption_metrics(["the cat"], [["the cat is on the mat"]])
    assert metrics["bleu1"] == pytest.approx(math.exp(-2), abs=1e-6)


def test_cider_d_matches_the_hand_computed_value():
    metrics = caption_metrics(["a b c", "c d"], [["a b"], ["c d"]])
    # Two images: every n-gram of the references occurs in one of them, so
    # every idf is log(2 / 1) and cancels in the cosines. Image 1: unigram
    # cosine 2 / sqrt(3 * 2), bigram cosine 1 / sqrt(2 * 1), no 3- or
    # 4-grams in the reference; lengths (counted in bigrams) differ by 1:
    # gaussian penalty exp(-1 / (2 * 6 ** 2)). Image 2 is perfect on 1- and
    # 2-grams and has no 3- or 4-grams: 10 * (1 + 1) / 4 = 5.
    first = 10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    assert metrics["cider"] == pytest.approx((first + 5) / 2, abs=1e-9)


def test_cider_of_a_single_image_is_zero_as_its_idf_is_zero():
    metrics = caption_metrics(["a red circle above a blue square"], [["a red circle above a blue square"]])
    assert metrics["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["cider"] == 0.0


def test_dicts_keyed_by_image_score_like_aligned_lists():
    predictions = ["a red circle", "a blue square above", "a green cross"]
    references = [["a red circle", "one red circle"], ["a blue square"], ["a green cross left of it"]]
    as_lists = caption_metrics(predictions, references)
    keys = [31, 7, 12]
    as_dicts = caption_metrics(dict(zip(keys, predictions)), dict(zip(reversed(keys), reversed(references))))
    assert as_dicts == pytest.approx(as_lists)


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        (["a b"], [["a b"], ["c d"]], "1 predictions but 2"),
        (["a b"], {0: ["a b"]}, "both be lists"),
        ({0: "a b"}, {1: ["a b"]}, "same keys"),
        (["a b"], [[]], "non-empty list"),
        (["a b"], ["a b"], "non-empty list"),
        ([], [], "no predictions"),
    ],
)
def test_mismatched_predictions_and_references_raise_value_error(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        caption_metrics(predictions, references)


# ---------------------------------------------------------------------------
# Evaluating a model: grouping by image

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "blue", "circle", "square", "above", "small"]
W = {w: i for i, w in enumerate(WORDS)}


def encode(text, length=8):
    """A caption row: <START>, the words, <END>, <NULL> padding."""
    indices = [W["<START>"]] + [W[w] for w in text.split()] + [W["<END>"]]
    return indices + [W["<NULL>"]] * (length - len(indices))


class TableCaptioner(nn.Module):
    """
    A stand-in model whose `sample` captions image n with table[key], key
    being the image's top-left red pixel, and records how it was called.
    """

    def __init__(self, table, attn=None):
        super().__init__()
        self.table = table  # int64 (num_keys, T)
        self.attn = attn  # (num_keys, T, Da, Da) or None
        self.calls = []
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device

    def sample(self, images, max_length=15):
        self.calls.append({"batch": len(images), "max_length": max_length, "training": self.training})
        keys = images[:, 0, 0, 0].long()
        captions = self.table[keys][:, :max_length]
        if self.attn is not None:
            return captions, self.attn[keys][:, :max_length]
        return captions


def keyed_images(keys):
    images = torch.zeros(len(keys), 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(keys, dtype=torch.uint8)
    return images


def test_evaluate_captions_captions_each_image_once_and_scores_against_all_its_rows():
    table = torch.tensor(
        [
            [W["a"], W["red"], W["circle"], W["<END>"], W["blue"], 0, 0],  # words after <END> are dropped
            [W["a"], W["blue"], W["square"], W["<END>"], 0, 0, 0],
            [W["<START>"], W["a"], W["small"], W["circle"], W["<END>"], 0, 0],  # special tokens are dropped
        ]
    )
    model = TableCaptioner(table)
    model.train()
    image_ids = torch.tensor([7, 7, 9, 7, 4, 9])
    keys = [0, 0, 1, 0, 2, 1]  # the same id always shows the same image
    captions = torch.tensor(
        [
            encode("a red circle"),
            encode("a small red circle"),
            encode("a blue square"),
            encode("a red circle above"),
            encode("a small circle"),
            encode("a small blue square"),
        ]
    )
    result = evaluate_captions(model, keyed_images(keys), captions, image_ids, WORDS, batch_size=2)

    # 3 distinct images, 2 at a time; the last one twice (the contract covers batches of two or more)
    assert [call["batch"] for call in model.calls] == [2, 2]
    assert all(call["max_length"] == captions.shape[1] - 1 and not call["training"] for call in model.calls)
    assert model.training, "the model must come back in train mode"
    assert result["image_ids"] == [7, 9, 4]
    assert result["predictions"] == {7: "a red circle", 9: "a blue square", 4: "a small circle"}
    assert result["references"] == {
        7: ["a red circle", "a small red circle", "a red circle above"],
        9: ["a blue square", "a small blue square"],
        4: ["a small circle"],
    }
    assert result["captions"].shape == (3, captions.shape[1] - 1)
    assert result["attn_weights"] is None
    assert result["metrics"] == pytest.approx(caption_metrics(result["predictions"], result["references"]))
    assert result["metrics"]["bleu1"] == pytest.approx(1.0, abs=1e-6)  # every word appears in a reference


def test_evaluate_captions_rejects_rows_that_do_not_line_up():
    model = TableCaptioner(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="same N"):
        evaluate_captions(model, keyed_images([0, 0]), torch.zeros(3, 5, dtype=torch.long), torch.zeros(2), WORDS)
    with pytest.raises(ValueError, match="both or neither"):
        evaluate_captions(
            model, keyed_images([0]), torch.zeros(1, 5, dtype=torch.long), torch.zeros(1), WORDS, boxes=torch.zeros(1, 2, 4)
        )


# ---------------------------------------------------------------------------
# Attention grounding


def peaked_attention(cells, grid=4):
    """(T, grid, grid) attention maps, map t peaking at cells[t] = (row, col)."""
    maps = torch.full((len(cells), grid, grid), 0.5 / (grid * grid - 1))
    for t, (row, col) in enumerate(cells):
        maps[t, row, col] = 0.5
    return maps


def test_grounding_counts_a_hit_when_the_peak_cell_holds_a_fifth_of_the_box():
    # 112x112 image, 4x4 grid of 28-pixel cells. Object 0 lies inside cell
    # (1, 1); object 1 spans x 20-40, y 20-40 (400 px): cell (0, 0) holds
    # 8x8 = 16% of it, cell (0, 1) 12x8 = 24%, cell (1, 1) 12x12 = 36%.
    boxes = torch.tensor([[[30.0, 30.0, 50.0, 50.0], [20.0, 20.0, 40.0, 40.0], [-1, -1, -1, -1]]])
    cells = [(1, 1), (0, 0), (0, 0), (0, 1), (1, 1), (3, 3), (2, 2)]
    objects = [0, 0, 1, 1, 1, -1, 1]
    hits, counted = grounding_hits(peaked_attention(cells)[None], torch.tensor([objects]), boxes)
    assert hits.tolist() == [[True, False, False, True, True, False, False]]
    assert counted.tolist() == [[o >= 0 for o in objects]]
    assert grounding_score(peaked_attention(cells)[None], torch.tensor([objects]), boxes) == pytest.approx(3 / 6)


def test_grounding_uses_the_grid_of_the_maps_and_the_image_size():
    # A 2x2 grid over a 64x64 image: cells of 32 pixels.
    boxes = torch.tensor([[[40.0, 0.0, 60.0, 20.0]]])
    attn = peaked_attention([(0, 1), (1, 0)], grid=2)[None]
    hits, _ = grounding_hits(attn, torch.tensor([[0, 0]]), boxes, image_size=64)
    assert hits.tolist() == [[True, False]]


def test_grounding_is_nan_when_no_word_names_an_object():
    attn = peaked_attention([(0, 0), (1, 1)])[None]
    assert math.isnan(grounding_score(attn, torch.tensor([[-1, -1]]), torch.zeros(1, 1, 4)))


def test_grounding_rejects_a_word_naming_an_absent_object():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [-1, -1, -1, -1]]])
    with pytest.raises(ValueError, match="absent"):
        grounding_score(peaked_attention([(0, 0)])[None], torch.tensor([[1]]), boxes)
    with pytest.raises(ValueError, match="object 2"):
        grounding_score(peaked_attention([(0, 0)])[None], torch.tensor([[2]]), boxes)


# "a small red circle above a small blue square": object 0 is the red
# circle, object 1 the blue square; both are small.
REFS = torch.tensor([encode("a small red circle above a small blue square", 12)])
REF_OBJECTS = torch.tensor([[-1, -1, 0, 0, 0, -1, -1, 1, 1, 1, -1, -1]])


def generated(text, length=12):
    """Word indices as `sample` returns them: no <START>, then <END>, then anything."""
    return torch.tensor(encode(text, length + 1)[1:])


def test_resolve_word_objects_settles_shared_words_by_their_phrase():
    tokens = generated("a small blue square above a small red circle")
    objects = resolve_word_objects(tokens, REFS, REF_OBJECTS, end=W["<END>"])
    assert objects.tolist() == [-1, 1, 1, 1, -1, -1, 0, 0, 0, -1, -1, -1]


def test_resolve_word_objects_leaves_unknown_and_ambiguous_words_out():
    # "circle" names object 0 alone; "small" stays ambiguous without a
    # colour next to it; "square" names object 1; words after <END> count not.
    tokens = torch.tensor([W["a"], W["small"], W["above"], W["circle"], W["small"], W["<END>"], W["square"]])
    objects = resolve_word_objects(tokens, REFS, REF_OBJECTS, end=W["<END>"])
    assert objects.tolist() == [-1, -1, -1, 0, 0, -1, -1]


def test_resolve_word_objects_reproduces_the_word_objects_of_shapes_references():
    import numpy as np

    from helper.data import shapes

    scenes = shapes.sample_scenes(40, np.random.default_rng(0))
    captions, image_index, word_objects = shapes.caption_rows(scenes, 4)
    captions, word_objects = torch.from_numpy(captions), torch.from_numpy(word_objects)
    for i in range(40):
        rows = torch.from_numpy(np.nonzero(image_index == i)[0])
        for row in rows:
            # A reference read as if generated: drop <START>, as `sample` does.
            resolved = resolve_word_objects(captions[row, 1:], captions[rows], word_objects[rows], end=shapes.END)
            assert resolved.tolist() == word_objects[row, 1:].tolist()


def test_evaluate_captions_reports_grounding_of_an_attention_model():
    table = generated("a small red circle above a small blue square", length=11)[None]
    # Object 0 in cell (0, 0), object 1 in cell (3, 3). The maps look at the
    # right object for "small red" and "blue square", at the wrong one for
    # "circle" and the first "small" of the second phrase.
    cells = [(2, 2), (0, 0), (0, 0), (3, 3), (1, 1), (1, 1), (0, 0), (3, 3), (3, 3), (1, 1), (1, 1)]
    model = TableCaptioner(table, attn=peaked_attention(cells)[None])
    boxes = torch.tensor([[[2.0, 2.0, 24.0, 24.0], [88.0, 88.0, 110.0, 110.0]]])
    images = torch.zeros(1, 3, 112, 112, dtype=torch.uint8)
    result = evaluate_captions(
        model, images, REFS, torch.tensor([5]), WORDS, boxes=boxes, word_objects=REF_OBJECTS, max_length=11
    )
    assert result["metrics"]["grounding"] == pytest.approx(4 / 6)
    assert result["attn_weights"].shape == (1, 11, 4, 4)


def test_exact_match_is_the_share_of_images_captioned_as_one_of_their_references():
    result = {
        "predictions": {1: "a red circle", 2: "a blue square", 3: "a red square"},
        "references": {1: ["a red circle", "a circle"], 2: ["a red square"], 3: ["a blue circle", "a red square"]},
    }
    assert exact_match(result) == pytest.approx(2 / 3)
