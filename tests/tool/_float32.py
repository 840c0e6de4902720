"""
How far apart two correct float32 computations of the same numbers may be.

The tool runs the module's own functions on batches of its own (beam search, cached features), so
its numbers and the module's are two computations that add the same terms in another order: another
solution's formula, or another batch size or memory layout that picks another kernel. Tests of the
tool compare words exactly and numbers within these bounds, which hold for any correct solution.
They are worst cases, so they are loose; a fault of the tool (a state, word or weight of another
image or step) moves the values by far more.
"""
import math

import torch

from helper.captioning.decoding import initial_state
from helper.captioning.parts import model_parts

EPS32 = torch.finfo(torch.float32).eps  # 2**-23: the spacing of float32 numbers near 1
TINY32 = torch.finfo(torch.float32).tiny  # the smallest normal float32: below it the relative precision is lost


def float32_sum_error(terms: int, sum_abs: float) -> float:
    """
    The most two float32 computations of one sum of products can differ when they add in another
    order: each is within terms * EPS32 * sum_abs of the exact sum (the worst case of recursive
    summation, each addition rounding by at most EPS32), so they are within twice that of each other.

    Inputs:
    - terms: how many products the sum adds
    - sum_abs: the sum of their absolute values

    Returns:
    - the bound, a float
    """
    return 2 * terms * EPS32 * sum_abs


def attention_rtol(model, images) -> list:
    """
    Relative tolerance of each image's attention weights (any step).

    A score is the H-term dot product h . A_l / sqrt(H). After the first step |h_k| < 1
    (h = o * tanh(c)), and the first h is the mean of A, so the absolute values of a score's terms
    add up to at most S = max(1, max_k |h0_k|) * max_l ||A_l||_1 / sqrt(H), and two correct
    computations of a score from the same h and A differ by at most d = float32_sum_error(H, S).
    (What h and A bring along, their own roundings from the projection and earlier steps, is not
    in the bound; for solutions written in other orders it stays far inside it.) The softmax turns
    changes of at most d in the scores into a factor within exp(+-2d) on every weight. Scores in
    the thousands (a model whose features are scaled up) make the weights that sensitive: a
    relative tolerance of a few per cent.

    Inputs:
    - model: a CaptioningRNN with attention (its parts are found by model_parts)
    - images: the (N, 3, H, W) images it captions

    Returns:
    - N floats, the relative tolerance of image n's weights
    """
    state = initial_state(model_parts(model), images)  # h (N, H), A (N, H, Da, Da)
    H = state.A.shape[1]
    largest_location = state.A.flatten(2).abs().sum(dim=1).amax(dim=1)  # (N,): max_l ||A_l||_1
    largest_h = state.h.abs().amax(dim=1).clamp(min=1.0)  # (N,)
    S = largest_location * largest_h / math.sqrt(H)
    return [math.expm1(2 * float32_sum_error(H, s)) for s in S.tolist()]


def log_prob_atol(model, steps: int) -> float:
    """
    Absolute tolerance of a caption's log-probability over `steps` words.

    A step adds s_w - logsumexp(s), with scores s = W h + b and |h_k| < 1: the absolute values of
    a score's H + 1 terms add up to at most S = max_v (||W_v||_1 + |b_v|), so two correct
    computations of a score differ by at most d = float32_sum_error(H + 1, S); the chosen score and
    the logsumexp (which moves by at most the largest change of a score) by 2d together; the
    logsumexp's own sum of V exponentials adds float32_sum_error(V, 1) to its log. Steps add up.

    Inputs:
    - model: a CaptioningRNN (its output projection is found by model_parts)
    - steps: the number of words

    Returns:
    - the tolerance, a float
    """
    proj = model_parts(model).output_proj
    S = (proj.weight.abs().sum(dim=1) + proj.bias.abs()).max().item()
    per_step = 2 * float32_sum_error(proj.in_features + 1, S) + float32_sum_error(proj.out_features, 1.0)
    return steps * per_step
