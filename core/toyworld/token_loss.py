"""A text-only auxiliary loss for training the toy world's text encoder jointly with the UNet.

Trained jointly from scratch, the encoder found it cheapest to give "circle" and "square" (and
"triangle" and "toy") nearly the same states (0.99 cosine), and the UNet then drew one shape for
either word (MADE.md). Here every position's output state must also say which caption word it holds:
a cosine classifier over the words of the world's captions, so two words can only be told apart by
pointing their states in different directions. The encoder stays jointly trained (which bound
DreamBooth's subject better than a frozen CLIP-style encoder did), but may no longer merge words.
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


class TokenReconstruction(nn.Module):
    """A head that names each position's input token from its output state, among the `vocabulary`
    (the token ids the captions use); thrown away after training."""

    def __init__(self, vocabulary: torch.Tensor, width: int, eos_token_id: int, temperature: float = 0.1):
        super().__init__()
        self.eos_token_id, self.temperature = eos_token_id, temperature
        self.words = nn.Parameter(torch.randn(len(vocabulary), width) * width ** -0.5)
        lookup = torch.full((int(vocabulary.max()) + 1,), IGNORE, dtype=torch.long)
        lookup[vocabulary] = torch.arange(len(vocabulary))
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        targets = torch.where(caption_positions(ids, self.eos_token_id), self.lookup[ids], IGNORE)
        logits = F.normalize(states.float(), dim=-1) @ F.normalize(self.words, dim=-1).T / self.temperature
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
