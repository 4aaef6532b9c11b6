"""Prompt encoding into the UNet's conditioning (SD 1.x/2.x: one text encoder; SDXL: two), with a
cache when the text encoders are frozen."""

from __future__ import annotations

from typing import Optional

import torch


def tokenize(tokenizer, prompts: list[str], max_length: Optional[int] = None):
    return tokenizer(prompts, padding="max_length", truncation=True,
                     max_length=max_length or tokenizer.model_max_length, return_tensors="pt")


def _device_of(module):
    # where the encoder is: the accelerator, or CPU once offloaded after precompute()
    return next(module.parameters()).device


class PromptEncoder:
    """Turns prompts into the UNet's conditioning.

    SD 1.x/2.x: the text encoder's last hidden states (encoder_hidden_states). SDXL, as diffusers'
    train_dreambooth_lora_sdxl.py and the original model: the penultimate hidden states of both
    encoders concatenated, plus the second encoder's pooled (projected) embedding.
    With frozen text encoders each distinct prompt is encoded once and cached: DreamBooth has only
    a handful of prompts, so this removes the text encoders from every step.
    """

    def __init__(self, tokenizer, text_encoder, trainable: bool, max_length: Optional[int] = None,
                 use_attention_mask: bool = False, tokenizer_2=None, text_encoder_2=None):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.trainable, self.max_length, self.use_attention_mask = trainable, max_length, use_attention_mask
        self._cache: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}

    @property
    def sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def _encode(self, prompts: list[str], device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.sdxl:
            tokens = tokenize(self.tokenizer, prompts, self.max_length)
            here = _device_of(self.text_encoder)
            mask = tokens.attention_mask.to(here) if self.use_attention_mask else None
            return self.text_encoder(tokens.input_ids.to(here), attention_mask=mask)[0].to(device), None
        states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            tokens = tokenize(tokenizer, prompts, self.max_length)
            out = encoder(tokens.input_ids.to(_device_of(encoder)), output_hidden_states=True)
            states.append(out.hidden_states[-2].to(device))
            pooled = out[0].to(device)  # the second encoder's text_embeds
        return torch.cat(states, dim=-1), pooled

    def encode(self, prompts: list[str], device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(hidden states, pooled embeddings or None) for the prompts."""
        if self.trainable:
            return self._encode(prompts, device)
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            with torch.no_grad():
                hidden, pooled = self._encode(missing, device)
                for i, prompt in enumerate(missing):
                    self._cache[prompt] = (hidden[i], None if pooled is None else pooled[i])
        hidden = torch.stack([self._cache[p][0] for p in prompts]).to(device)
        pooled = torch.stack([self._cache[p][1] for p in prompts]).to(device) if self.sdxl else None
        return hidden, pooled

    def __call__(self, prompts: list[str], device) -> torch.Tensor:
        return self.encode(prompts, device)[0]

    def unet_inputs(self, batch: dict, device) -> dict:
        """The UNet's conditioning keyword arguments for a batch.

        SDXL also needs added_cond_kwargs: the pooled text embedding and, per image, the time ids
        (original size, crop top-left, target size) the dataset recorded.
        """
        hidden, pooled = self.encode(batch["prompts"], device)
        if pooled is None:
            return {"encoder_hidden_states": hidden}
        time_ids = batch["time_ids"].to(device, dtype=hidden.dtype)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def precompute(self, prompts: list[str], device) -> None:
        # unique prompts only: hundreds of class images usually share one caption, and the stacked
        # result of encode() would hold a copy of the states for each
        self(sorted(set(prompts)), device)
