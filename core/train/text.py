"""Prompt encoding, with a cache when the text encoder is frozen."""

from __future__ import annotations

from typing import Optional

import torch


def tokenize(tokenizer, prompts: list[str], max_length: Optional[int] = None):
    return tokenizer(prompts, padding="max_length", truncation=True,
                     max_length=max_length or tokenizer.model_max_length, return_tensors="pt")


class PromptEncoder:
    """Turns prompts into the UNet's encoder_hidden_states.

    With a frozen text encoder each distinct prompt is encoded once and cached:
    DreamBooth has only a handful of prompts, so this removes the text encoder from
    every step.
    """

    def __init__(self, tokenizer, text_encoder, trainable: bool, max_length: Optional[int] = None,
                 use_attention_mask: bool = False):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.trainable, self.max_length, self.use_attention_mask = trainable, max_length, use_attention_mask
        self._cache: dict[str, torch.Tensor] = {}

    def _encode(self, prompts: list[str], device) -> torch.Tensor:
        tokens = tokenize(self.tokenizer, prompts, self.max_length)
        # where the encoder is: the accelerator, or CPU once offloaded after precompute()
        here = next(self.text_encoder.parameters()).device
        mask = tokens.attention_mask.to(here) if self.use_attention_mask else None
        return self.text_encoder(tokens.input_ids.to(here), attention_mask=mask)[0].to(device)

    def __call__(self, prompts: list[str], device) -> torch.Tensor:
        if self.trainable:
            return self._encode(prompts, device)
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            with torch.no_grad():
                for prompt, emb in zip(missing, self._encode(missing, device)):
                    self._cache[prompt] = emb
        return torch.stack([self._cache[p] for p in prompts]).to(device)

    def precompute(self, prompts: list[str], device) -> None:
        self(list(prompts), device)
