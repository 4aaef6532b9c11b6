"""A text-only auxiliary loss for training the toy world's text encoder jointly with the UNet.

Trained jointly from scratch, the encoder found it cheapest to give "circle" and "square" (and
"triangle" and "toy") nearly the same states (0.99 cosine), and the UNet then drew one shape for
either word (MADE.md). Here every position's output state must also name caption words, its own or all
those up to it: a cosine classifier over the words of the world's captions, so two words can only be
told apart by pointing their states in different directions. The encoder stays jointly trained (which
bound DreamBooth's subject better than a frozen CLIP-style encoder did), but may no longer merge words.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IGNORE = -100


def caption_positions(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True for every position up to and including the first end-of-text token: the padding after it
    repeats that token (CLIP pads with it) and says nothing of the caption."""
    eos = (ids == eos_token_id).int()
    return (eos.cumsum(dim=1) - eos) == 0


SPANS = ("own", "prefix")


def prefix_word_targets(words: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """For each position, a distribution over the distinct words (indices into the vocabulary, IGNORE for
    none) at or before it, in proportion to their `weights`: what a causal encoder's state could know of
    its caption so far. Rows with nothing weighted yet are all zero."""
    seen = F.one_hot(words.clamp(min=0), len(weights)).float() * (words >= 0)[..., None].float()
    seen = (seen.cumsum(dim=1) > 0).float() * weights
    return seen / seen.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def inverse_document_frequency(ids: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    """log(captions / captions holding the word): zero for the words every caption has ("a photo of"),
    which say nothing of the image, most for the rarest (a shape word: log 4)."""
    holding = torch.stack([(ids == token).any(dim=1).sum() for token in vocabulary]).float()
    return torch.log(len(ids) / holding)


class TokenReconstruction(nn.Module):
    """A head that names, from each position's output state, its own input token ("own") or every caption
    word up to it ("prefix", so that the states after a word carry it too, as the UNet reads them; rare
    words weigh more, by `word_weights`; with `padding`, the padding states too name the whole caption),
    among the `vocabulary` (the token ids the captions use); thrown away after training."""

    def __init__(self, vocabulary: torch.Tensor, width: int, eos_token_id: int, span: str = "own",
                 word_weights: torch.Tensor | None = None, temperature: float = 0.1, padding: bool = False):
        super().__init__()
        if span not in SPANS:
            raise ValueError(f"span must be one of {SPANS}, not {span!r}")
        if padding and span != "prefix":
            raise ValueError("padding states can only name the caption with span 'prefix'")
        self.eos_token_id, self.span, self.temperature, self.padding = eos_token_id, span, temperature, padding
        self.words = nn.Parameter(torch.randn(len(vocabulary), width) * width ** -0.5)
        lookup = torch.full((int(vocabulary.max()) + 1,), IGNORE, dtype=torch.long)
        lookup[vocabulary] = torch.arange(len(vocabulary))
        self.register_buffer("lookup", lookup, persistent=False)
        weights = torch.ones(len(vocabulary)) if word_weights is None else word_weights.float()
        self.register_buffer("word_weights", weights, persistent=False)

    def forward(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        caption = caption_positions(ids, self.eos_token_id)
        targets = torch.where(caption, self.lookup[ids], IGNORE)
        logits = F.normalize(states.float(), dim=-1) @ F.normalize(self.words, dim=-1).T / self.temperature
        if self.span == "own":
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        soft = prefix_word_targets(targets, self.word_weights)
        per_state = -(soft * F.log_softmax(logits, dim=-1)).sum(dim=-1)
        if not self.padding:
            return per_state[caption].mean()
        # the padding states name the whole caption (their targets carry on from its last word): the UNet's
        # cross-attention reads all 77 states, and padding left free looked alike for every caption (0.97
        # cosine for "sks toy" vs "a toy" over all states, 0.71 over the caption's). Weighed as much as the
        # caption's states together, not by their number (~70 of 77)
        return per_state[caption].mean() + per_state[~caption].mean()


def unknown_token_pool(known: torch.Tensor, vocab_size: int, special: tuple[int, ...]) -> torch.Tensor:
    """Every token id the captions never use, special tokens left out."""
    unknown = torch.ones(vocab_size, dtype=torch.bool)
    unknown[known] = False
    unknown[list(special)] = False
    return torch.nonzero(unknown).flatten()


def insert_unknown_tokens(ids: torch.Tensor, share: float, pool: torch.Tensor, eos_token_id: int, marker: int,
                          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Put one random token of `pool` at a random place inside `share` of the captions, as DreamBooth's
    "sks" sits in its prompt. Returns (ids for the encoder, ids for the loss): the
    second has `marker` (an id past the vocabulary) there instead, so the loss names every such token by one
    word, "unknown", and the encoder must keep a state that says a word was there that the world never uses."""
    ids, marked = ids.clone(), ids.clone()
    lengths = (ids != eos_token_id).sum(dim=1)  # bos + words
    for row in torch.nonzero(torch.rand(len(ids), generator=gen) < share).flatten().tolist():
        at = int(torch.randint(1, int(lengths[row]), (1,), generator=gen))
        token = pool[torch.randint(len(pool), (1,), generator=gen)]
        ids[row] = torch.cat([ids[row, :at], token, ids[row, at:-1]])
        marked[row] = torch.cat([marked[row, :at], torch.tensor([marker]), marked[row, at:-1]])
    return ids, marked
