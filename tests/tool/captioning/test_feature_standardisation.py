"""
Training the decoder alone on standardised features of a frozen encoder
(helper.captioning.features.standardise_features), and folding the standardisation
into the feature projection (fold_standardisation) so that the model works
on raw images again.
"""
import pytest
import torch

from helper.captioning.features import (
    FeatureLookup,
    fold_standardisation,
    index_images,
    standardise_features,
    swap_image_encoder,
    unfold_standardisation,
)
from helper.captioning.parts import model_parts


def test_standardised_features_have_zero_mean_and_unit_std_over_the_training_rows():
    torch.manual_seed(0)
    features = 5 + 3 * torch.rand(10, 4, 2, 2, dtype=torch.float64)
    train_rows = torch.tensor([0, 2, 4, 6, 8])
    standardised, mean, std = standardise_features(features, train_rows, eps=0.0)
    train = standardised[train_rows]
    assert torch.allclose(train.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(train.std(dim=(0, 2, 3)), torch.ones(4, dtype=torch.float64))
    assert mean.shape == std.shape == (4,)
    # the other rows go through the same map, with the training rows' statistics
    expected = (features[1] - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    assert torch.allclose(standardised[1], expected)


def test_folded_linear_layer_gives_on_raw_features_what_it_gave_on_standardised_ones():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 3).double()
    raw = torch.randn(20, 6, dtype=torch.float64) * 4 + 7
    mean, std = raw.mean(dim=0), raw.std(dim=0)
    weight, bias = fold_standardisation(layer.weight, layer.bias, mean, std)
    assert torch.allclose(raw @ weight.T + bias, layer((raw - mean) / std))


def test_unfolding_undoes_folding():
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    mean, std = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.1
    unfolded = unfold_standardisation(*fold_standardisation(weight, bias, mean, std), mean, std)
    assert torch.allclose(unfolded[0], weight) and torch.allclose(unfolded[1], bias)
    raw = torch.randn(20, 6, dtype=torch.float64)
    w, b = unfold_standardisation(weight, bias, mean, std)
    assert torch.allclose(((raw - mean) / std) @ w.T + b, raw @ weight.T + bias)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "attn"])
def test_folding_makes_a_decoder_of_standardised_features_a_model_of_raw_images(impl, cell):
    torch.manual_seed(0)
    words = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4, "b": 5}
    model = impl.CaptioningRNN(words, input_dim=400, wordvec_dim=8, hidden_dim=16, cell_type=cell,
                               image_encoder_pretrained=False, ignore_index=0).double().eval()
    raw = torch.rand(5, 400, 4, 4, dtype=torch.float64) * 3 + 1  # post-ReLU-like: positive, a common offset
    captions = torch.randint(1, 6, (5, 17))
    standardised, mean, std = standardise_features(raw, torch.arange(5))
    stand_ins = index_images(torch.arange(5))
    projection = model_parts(model).feature_proj
    swap_image_encoder(model, FeatureLookup(standardised))
    expected_loss, expected_sample = model(stand_ins, captions), model.sample(stand_ins)

    with torch.no_grad():
        weight, bias = fold_standardisation(projection.weight, projection.bias, mean, std)
        projection.weight.copy_(weight)
        projection.bias.copy_(bias)
    swap_image_encoder(model, FeatureLookup(raw))
    loss, sample = model(stand_ins, captions), model.sample(stand_ins)
    assert torch.allclose(loss, expected_loss, rtol=1e-10)
    if cell == "attn":
        (sample, attn), (expected_sample, expected_attn) = sample, expected_sample
        assert torch.allclose(attn, expected_attn, atol=1e-10)
    assert torch.equal(sample, expected_sample)
