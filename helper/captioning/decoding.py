"""
Turning models' outputs into captions: word indices to text, and beam search.

Beam search works with any implementation of the API of
`rnn_lstm_captioning.py`: the model's pieces come from `model_parts`
(helper/captioning/parts.py), and the decoder is stepped with the module's
own `step_forward` methods and `dot_product_attention`.
"""
import math
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from helper.captioning.parts import ModelParts, model_parts, unwrap_model


def decode_captions(
    captions: torch.Tensor, idx_to_word: Union[Sequence[str], Mapping[int, str]]
) -> Union[str, List[str]]:
    """
    Word indices to strings, as the assignment shows them: <NULL> padding is
    dropped, <START> and <END> are kept, and a caption stops after its <END>.

    Inputs:
    - captions: word indices, integer (N, T) or (T,)
    - idx_to_word: a list, or a dict, from index to word

    Returns:
    - a list of N strings for (N, T) input, one string for (T,) input
    """
    if captions.dim() not in (1, 2):
        raise ValueError(f"captions must have shape (N, T) or (T,); got {tuple(captions.shape)}")
    singleton = captions.dim() == 1
    rows = captions.view(1, -1) if singleton else captions
    decoded = []
    for row in rows.tolist():
        words = []
        for index in row:
            word = idx_to_word[index]
            if word != "<NULL>":
                words.append(word)
            if word == "<END>":
                break
        decoded.append(" ".join(words))
    return decoded[0] if singleton else decoded


# ---------------------------------------------------------------------------
# Stepping the decoder, one word at a time


@dataclass
class DecoderState:
    """
    - h: hidden state, (M, H)
    - c: cell state, (M, H) (zeros, unused, for "rnn")
    - A: projected feature grid, (M, H, Da, Da), for "attn"; else None
    """

    h: torch.Tensor
    c: torch.Tensor
    A: Optional[torch.Tensor]


def initial_state(parts: ModelParts, images: torch.Tensor) -> DecoderState:
    """
    Encode images into the decoder's initial state, as CaptioningRNN does:
    "rnn"/"lstm" project the spatially averaged c5 features to h0 (c0 = 0);
    "attn" projects every location to A and starts from h0 = c0 = mean of A.

    Inputs:
    - parts: from model_parts
    - images: (N, 3, H, W)

    Returns:
    - a DecoderState of N rows
    """
    features = parts.encoder(images)  # (N, D, Da, Da)
    if parts.cell_type == "attn":
        A = parts.feature_proj(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = A.mean(dim=(2, 3))
        return DecoderState(h=h, c=h, A=A)
    h = parts.feature_proj(features.mean(dim=(2, 3)))
    return DecoderState(h=h, c=torch.zeros_like(h), A=None)


def decoder_step(
    parts: ModelParts, words: torch.Tensor, state: DecoderState
) -> Tuple[torch.Tensor, DecoderState, Optional[torch.Tensor]]:
    """
    Feed one word to the decoder.

    Inputs:
    - parts: from model_parts
    - words: int64 (M,), the previous words
    - state: DecoderState of M rows

    Returns a tuple of:
    - scores: (M, V), unnormalised scores of the next word
    - the next DecoderState
    - attn_weights: (M, Da, Da) for "attn", else None
    """
    if words.shape[0] == 1:
        # The contract covers batches of two or more (a correct solution may
        # squeeze a batch of one away): step a batch of one doubled.
        scores, doubled, weights = decoder_step(parts, words.repeat(2), repeat_state(state, 2))
        first = DecoderState(h=doubled.h[:1], c=doubled.c[:1], A=None if doubled.A is None else doubled.A[:1])
        return scores[:1], first, None if weights is None else weights[:1]
    x = parts.embedding(words.unsqueeze(1)).squeeze(1)  # (M, W)
    h, c, weights = state.h, state.c, None
    if parts.cell_type == "rnn":
        h = parts.recurrent.step_forward(x, h)
    elif parts.cell_type == "lstm":
        h, c = parts.recurrent.step_forward(x, h, c)
    else:
        attn, weights = parts.attention(h, state.A)
        h, c = parts.recurrent.step_forward(x, h, c, attn)
    return parts.output_proj(h), DecoderState(h=h, c=c, A=state.A), weights


def _log_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Log-probabilities in at least float32 (scores may be bfloat16 under autocast)."""
    return torch.log_softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=1)


def _check_images(images) -> None:
    """ValueError unless images is a batch (N, 3, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, 3, H, W); got {got}")


def repeat_state(state: DecoderState, times: int) -> DecoderState:
    """
    Each row of a DecoderState `times` times in a row: (M, ...) -> (M * times, ...),
    rows m * times ... (m + 1) * times - 1 copying row m.
    """
    return DecoderState(
        h=state.h.repeat_interleave(times, dim=0),
        c=state.c.repeat_interleave(times, dim=0),
        A=None if state.A is None else state.A.repeat_interleave(times, dim=0),
    )


@torch.no_grad()
def sequence_log_prob(model: nn.Module, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """
    Log-probability of given captions under the model, by teacher forcing.

    A caption is scored up to and including its first <END>; what follows
    (the <NULL> padding of beam_search, or the words that `sample` keeps
    generating) is ignored. The words are fed one step at a time exactly as
    beam_search feeds them, so the two agree to rounding. Each image is
    encoded once, however many captions it has.

    Inputs:
    - model: a CaptioningRNN
    - images: (N, 3, H, W)
    - captions: integer (N, T), or (N, S, T) for S captions per image; first
      element = first generated word (the layout of `sample` and
      `beam_search`, without <START>)

    Returns:
    - log_probs: (N,), or (N, S), float32 (float64 for a float64 model), on
      the images' device
    """
    _check_images(images)
    parts = model_parts(model)
    N = images.shape[0]
    if captions.dim() not in (2, 3) or captions.shape[0] != N or captions.is_floating_point():
        raise ValueError(
            f"captions must be integer (N, T) or (N, S, T) with N = {N} images; "
            f"got {captions.dtype} {tuple(captions.shape)}"
        )
    if captions.numel() and (captions.min() < 0 or captions.max() >= parts.vocab_size):
        raise ValueError(f"captions must hold word indices in [0, {parts.vocab_size})")
    per_image = captions.shape[1] if captions.dim() == 3 else 1
    flat = captions.reshape(N * per_image, captions.shape[-1]).to(images.device)

    state = repeat_state(initial_state(parts, images), per_image)
    words = torch.full((len(flat),), parts.start, dtype=torch.long, device=images.device)
    total = torch.zeros(len(flat), dtype=torch.promote_types(state.h.dtype, torch.float32), device=images.device)
    alive = torch.ones_like(words, dtype=torch.bool)
    for t in range(flat.shape[1]):
        scores, state, _ = decoder_step(parts, words, state)
        log_prob = _log_softmax(scores).gather(1, flat[:, t : t + 1]).squeeze(1)
        total = total + torch.where(alive, log_prob, torch.zeros_like(log_prob))
        if parts.end is not None:
            alive = alive & (flat[:, t] != parts.end)
        words = flat[:, t]
    return total.view(N, per_image) if captions.dim() == 3 else total


# ---------------------------------------------------------------------------
# Beam search


@dataclass
class Beams:
    """
    The K hypotheses that beam search ends with, for each of N images,
    best first.

    - tokens: int64 (N, K, T), first element = first generated word; a
      hypothesis that emitted <END> is padded with <NULL> after it
    - log_probs: (N, K), the sum of the log-probabilities of the words up to
      and including <END>; -inf for slots that could not be filled (fewer
      than K distinct hypotheses exist, e.g. K > V at the first step)
    - lengths: int64 (N, K), number of words including <END> (T for a
      hypothesis that did not finish)
    - scores: (N, K), the ranking key: log_probs / lengths ** length_penalty
      (log_probs itself when length_penalty is 0); sorted descending
    - attn_weights: for "attn", (N, K, T, Da, Da) on the CPU, the attention
      behind each word (zeros after <END>); else None
    """

    tokens: torch.Tensor
    log_probs: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    attn_weights: Optional[torch.Tensor]


def _ranking_key(log_probs: torch.Tensor, lengths: torch.Tensor, length_penalty: float) -> torch.Tensor:
    """log_probs / lengths ** length_penalty; exactly log_probs when the penalty is 0."""
    if length_penalty == 0:
        return log_probs
    return log_probs / lengths.to(log_probs.dtype) ** length_penalty


def _check_beam_options(beam_size, max_length, length_penalty) -> None:
    """ValueError for a beam size or length below 1, or a negative length penalty."""
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an integer >= 1; got {beam_size!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an integer >= 1; got {max_length!r}")
    if not isinstance(length_penalty, (int, float)) or not math.isfinite(length_penalty) or length_penalty < 0:
        raise ValueError(f"length_penalty must be a finite number >= 0; got {length_penalty!r}")


@torch.no_grad()
def beam_search_beams(
    model: nn.Module,
    images: torch.Tensor,
    beam_size: int = 3,
    max_length: int = 15,
    length_penalty: float = 0.0,
) -> Beams:
    """
    Beam search over captions, batched over images and beams: the decoder
    runs on N * K rows at once, one time step after another.

    Each step extends every unfinished hypothesis by every word and keeps,
    per image, the K best of all extensions. A hypothesis that emitted <END>
    is finished: it keeps its slot, is padded with <NULL> and its
    log-probability no longer changes. All words of the vocabulary may be
    generated, special tokens included, exactly as in greedy `sample`.

    Ranking: with length_penalty alpha = 0, by the sum of log-probabilities;
    with alpha > 0, by log_prob / length ** alpha (length = words including
    <END>; alpha = 1 is the mean log-probability per word). This simple
    normalisation is used rather than GNMT's ((5 + length) / 6) ** alpha.
    The same key decides which hypotheses stay in the beam at every step,
    so finished short hypotheses compete with longer unfinished ones on
    normalised scores. (Unfinished hypotheses all have the same length, so
    among them the key orders as the plain log-probability does.)

    The image features are computed once per image and then repeated for
    the K beams. Runs under torch.no_grad and leaves train/eval mode alone
    (in train mode batch norm uses batch statistics, as in `sample`).

    Inputs:
    - model: a CaptioningRNN of any cell type
    - images: (N, 3, H, W), uint8 in [0, 255] or float in [0, 1]
    - beam_size: K >= 1; K = 1 is greedy decoding; K may exceed V
    - max_length: T, the number of words to generate at most
    - length_penalty: alpha >= 0

    Returns:
    - a Beams, best hypothesis first for each image
    """
    _check_images(images)
    _check_beam_options(beam_size, max_length, length_penalty)
    parts = model_parts(model)
    N, K, T, V = images.shape[0], beam_size, max_length, parts.vocab_size
    device = images.device
    # The global K best extensions are always among the `width` best
    # extensions of each beam, so each beam only offers those.
    width = min(K, V)

    state = repeat_state(initial_state(parts, images), K)
    score_dtype = torch.promote_types(state.h.dtype, torch.float32)
    # All K beams start as the same <START>: only one of them may be extended,
    # or the beam would fill with K copies of the same hypothesis.
    log_probs = torch.full((N, K), -math.inf, dtype=score_dtype, device=device)
    log_probs[:, 0] = 0.0
    lengths = torch.zeros(N, K, dtype=torch.long, device=device)
    finished = torch.zeros(N, K, dtype=torch.bool, device=device)
    scores = log_probs
    tokens = torch.full((N * K, T), parts.null, dtype=torch.long, device=device)
    attn_history = None
    if parts.cell_type == "attn":
        attn_history = state.A.new_zeros(N * K, T, *state.A.shape[2:])
    words = torch.full((N * K,), parts.start, dtype=torch.long, device=device)
    image_offsets = torch.arange(N, device=device).unsqueeze(1) * K  # (N, 1): row of each image's first beam

    for t in range(T):
        step_scores, state, weights = decoder_step(parts, words, state)
        _, candidates = step_scores.topk(width, dim=1)  # (N*K, width)
        candidate_log_probs = _log_softmax(step_scores).gather(1, candidates)

        # A finished hypothesis has one extension: itself, padded with <NULL>.
        done = finished.view(-1, 1)
        frozen = torch.full_like(candidate_log_probs, -math.inf)
        frozen[:, 0] = 0.0
        candidate_log_probs = torch.where(done, frozen, candidate_log_probs)
        candidates = torch.where(done, torch.full_like(candidates, parts.null), candidates)

        total = (log_probs.view(-1, 1) + candidate_log_probs).view(N, K * width)
        total_lengths = torch.where(done, lengths.view(-1, 1), torch.full_like(candidates, t + 1)).view(N, K * width)
        now_finished = done.expand(-1, width)
        if parts.end is not None:
            now_finished = now_finished | (candidates == parts.end)
        now_finished = now_finished.reshape(N, K * width)

        key = _ranking_key(total, total_lengths, length_penalty)
        scores, chosen = key.topk(K, dim=1)  # (N, K), best first
        parents = (image_offsets + chosen // width).view(-1)  # (N*K,) rows of the extended hypotheses
        words = candidates.view(N, K * width).gather(1, chosen).view(-1)
        log_probs = total.gather(1, chosen)
        lengths = total_lengths.gather(1, chosen)
        was_finished = finished.view(-1)[parents]
        finished = now_finished.gather(1, chosen)

        # A is the same for all beams of an image: it needs no reordering.
        state = DecoderState(h=state.h[parents], c=state.c[parents], A=state.A)
        tokens = tokens[parents]
        tokens[:, t] = words
        if attn_history is not None:
            attn_history = attn_history[parents]
            attn_history[:, t] = torch.where(
                was_finished.view(-1, 1, 1), torch.zeros_like(weights), weights[parents]
            )
        if finished.all():
            break

    return Beams(
        tokens=tokens.view(N, K, T),
        log_probs=log_probs,
        lengths=lengths,
        scores=scores,
        attn_weights=None if attn_history is None else attn_history.view(N, K, *attn_history.shape[1:]).cpu(),
    )


def beam_search(
    model: nn.Module,
    images: torch.Tensor,
    beam_size: int = 3,
    max_length: int = 15,
    length_penalty: float = 0.0,
):
    """
    Caption images with beam search (see beam_search_beams), keeping the best
    hypothesis of each image; the output has the layout of `model.sample`.

    beam_size = 1 gives greedy decoding: the same words as `model.sample` up
    to and including the first <END>; after it beam search pads with <NULL>
    (and zero attention weights) where `sample` goes on generating.

    Inputs:
    - model: a CaptioningRNN of any cell type
    - images: (N, 3, H, W), uint8 in [0, 255] or float in [0, 1]
    - beam_size: K >= 1
    - max_length: number of words to generate at most
    - length_penalty: alpha >= 0, rank by log_prob / length ** alpha

    Returns:
    - captions: int64 (N, max_length) on the images' device; captions[:, 0]
      is the first generated word
    - for "attn" also attn_weights: (N, max_length, Da, Da) on the CPU
    """
    beams = beam_search_beams(model, images, beam_size, max_length, length_penalty)
    captions = beams.tokens[:, 0]
    if beams.attn_weights is not None:
        return captions, beams.attn_weights[:, 0]
    return captions


def generate_captions(
    model: nn.Module,
    images: torch.Tensor,
    beam_size: int = 1,
    max_length: int = 15,
    length_penalty: float = 0.0,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """
    Caption images greedily (`model.sample`) when beam_size is 1, else with
    beam search, and return the same pair for every cell type.

    Inputs:
    - model: a CaptioningRNN
    - images: (N, 3, H, W)
    - beam_size: 1 for greedy, K > 1 for beam search
    - max_length: number of words to generate at most
    - length_penalty: alpha for beam search (see beam_search_beams)

    Returns a tuple of:
    - captions: int64 (N, max_length)
    - attn_weights: (N, max_length, Da, Da) on the CPU for "attn", else None
    """
    _check_beam_options(beam_size, max_length, length_penalty)
    if beam_size == 1 and images.shape[0] == 1:
        # The contract covers batches of two or more: sample a batch of one doubled.
        captions, attn_weights = generate_captions(model, images.repeat(2, 1, 1, 1), 1, max_length)
        return captions[:1], None if attn_weights is None else attn_weights[:1]
    if beam_size == 1:
        output = unwrap_model(model).sample(images, max_length=max_length)
    else:
        output = beam_search(model, images, beam_size, max_length, length_penalty)
    if isinstance(output, tuple):
        return output
    return output, None
