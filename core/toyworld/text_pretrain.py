"""CLIP-style pretraining of the toy world's text encoder, before the UNet sees it.

Stable Diffusion conditions on a CLIP text encoder that was trained, frozen, on image-caption pairs
before the UNet ever ran. Trained jointly with the UNet from scratch instead, the toy encoder gave
"circle" and "square" (and "triangle" and "toy") nearly the same states, and the base drew the same
shape for either word (MADE.md). Here the encoder first learns to tell captions apart by the images
they describe: a contrastive (InfoNCE) loss against a small image encoder on the VAE's latents, which
is thrown away afterwards. The world's checker is not used: the judge stays independent of the base.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .token_loss import TokenReconstruction, insert_unknown_tokens, inverse_document_frequency, unknown_token_pool

Log = Callable[[str], None]
CAPTIONS_PER_BATCH = 256  # more captions a batch give each one more negatives to be told apart from


class LatentImageEncoder(nn.Module):
    """A few strided convolutions over 4 x 16 x 16 latents, pooled to one vector per image."""

    def __init__(self, width: int, channels: int = 4, hidden: int = 96):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.GroupNorm(8, hidden), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.GroupNorm(8, hidden), nn.SiLU())
        self.project = nn.Linear(hidden, width)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.project(self.net(latents).mean(dim=(2, 3)))


POOLINGS = ("eos", "mean")
TEXT_OBJECTIVES = ("contrastive", "words")  # "words": pretrain_on_words, on captions alone


def caption_text_features(text_encoder, ids: torch.Tensor, project: nn.Module, pooling: str) -> torch.Tensor:
    """The caption's vector. "eos" is CLIP's: the state at the first end-of-text token, so the states
    before it keep their own words (a word the world never uses, like DreamBooth's "sks", still changes
    its own position's state). "mean" averages all 77 positions: every position, padding too, is taught
    to carry the caption, and a word that says nothing of the image is averaged out of all of them."""
    out = text_encoder(ids)
    return project(out.pooler_output if pooling == "eos" else out[0].mean(dim=1))


def same_caption_targets(ids: torch.Tensor) -> torch.Tensor:
    """Row-normalised matches: a batch often holds several images of one caption, and none of them
    is a wrong answer for it."""
    same = (ids[:, None, :] == ids[None, :, :]).all(dim=-1).float()
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(text: torch.Tensor, image: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over cosine similarities, with soft targets."""
    logits = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T / temperature
    text_to_image = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    image_to_text = -(targets.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (text_to_image + image_to_text) / 2


def pretrain_text_encoder(text_encoder, latents: torch.Tensor, ids: torch.Tensor, budget, seed: int, log: Log,
                          *, lr: float, pooling: str, batch_size: int = CAPTIONS_PER_BATCH, temperature: float = 0.07
                          ) -> tuple[int, float]:
    """Train `text_encoder` in place within `budget` (a StepBudget); returns (steps, final loss)."""
    width = text_encoder.config.hidden_size
    image_encoder, project = LatentImageEncoder(width, latents.shape[1]), nn.Linear(width, width)
    gen = torch.Generator().manual_seed(seed)

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        batch_ids = ids[idx]
        return contrastive_loss(caption_text_features(text_encoder, batch_ids, project, pooling),
                                image_encoder(latents[idx]), same_caption_targets(batch_ids), temperature)

    text_encoder.train()
    params = [*text_encoder.parameters(), *image_encoder.parameters(), *project.parameters()]
    steps, final = train_steps(params, budget, batch_loss, log, lr=lr, warmup=50, name="contrastive loss")
    log(f"text encoder: {steps} steps, final contrastive loss {final:.4f} (chance {math.log(batch_size):.2f})")
    return steps, final


def train_steps(params: list, budget, batch_loss: Callable[[], torch.Tensor], log: Log, *, lr: float, warmup: int,
                name: str) -> tuple[int, float]:
    """AdamW on `params` with a cosine schedule over `budget` (a StepBudget), gradients clipped at 1, the mean
    `name` logged every 50 steps; returns (steps, the mean of the last 50 losses)."""
    from .pretrain import cosine_lr_budget
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = cosine_lr_budget(opt, budget, warmup=warmup)
    losses, step = [], 0
    while not budget.done(step):
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log(f"text encoder step {step}: {name} {sum(losses[-50:]) / len(losses[-50:]):.4f}")
        step += 1
    return step, sum(losses[-50:]) / max(1, len(losses[-50:]))


WORD_WEIGHT_FLOOR = 0.1


def pretrain_on_words(text_encoder, ids: torch.Tensor, budget, seed: int, log, *, lr: float, unknown_share: float,
                      batch_size: int = 256) -> tuple[int, float]:
    """Train `text_encoder` in place on captions alone: each state must name every caption word up to it (the
    "prefix" loss, rarer words weighing more; the padding states the whole caption), and with `unknown_share`
    > 0 also an inserted unknown token. No images: a few seconds a hundred steps, against the CLIP-style
    pretraining's minutes. Returns (steps, final loss); the loss cannot fall below the soft targets' own entropy."""
    c, gen = text_encoder.config, torch.Generator().manual_seed(seed)
    eos, marker = c.eos_token_id, c.vocab_size
    pool = unknown_token_pool(torch.unique(ids), c.vocab_size, (c.bos_token_id, c.eos_token_id, c.pad_token_id))
    sample = insert_unknown_tokens(ids[:4096], unknown_share, pool, eos, marker, torch.Generator().manual_seed(seed))[1]
    vocabulary = torch.unique(sample)
    rarity = inverse_document_frequency(sample, vocabulary)
    missing = torch.from_numpy(np.setdiff1d(torch.unique(ids).numpy(), vocabulary.numpy()))
    if len(missing):  # words of captions past the sample (a base's named objects come last): rarity from all
        vocabulary, rarity = torch.cat([vocabulary, missing]), torch.cat([rarity, inverse_document_frequency(ids, missing)])
    # every word weighs a little, "a photo of" too: a state with nothing to name would be left free, and the
    # states before any insertion then learned to say "unknown" in every caption
    head = TokenReconstruction(vocabulary, c.hidden_size, eos, "prefix", rarity + WORD_WEIGHT_FLOOR, padding=True)
    # only the world's words' embeddings learn: the inserted tokens' stay as initialised, like "sks"'s, so the
    # encoder learns to tell any untrained embedding from a world word instead of moving those it saw
    trained_rows = torch.zeros(c.vocab_size, 1)
    trained_rows[torch.unique(ids)] = 1
    mask = text_encoder.get_input_embeddings().weight.register_hook(lambda grad: grad * trained_rows)

    def batch_loss() -> torch.Tensor:
        batch, targets = insert_unknown_tokens(ids[torch.randint(len(ids), (batch_size,), generator=gen)],
                                               unknown_share, pool, eos, marker, gen)
        return head(text_encoder(batch)[0], targets)

    text_encoder.train()
    params = [*text_encoder.parameters(), *head.parameters()]
    try:
        steps, final = train_steps(params, budget, batch_loss, log, lr=lr, warmup=20, name="word loss")
    finally:
        mask.remove()
    log(f"text encoder: {steps} steps on captions alone, final word loss {final:.4f}")
    return steps, final
