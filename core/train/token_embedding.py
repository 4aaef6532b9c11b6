"""Training the identifier's token embedding along with the UNet (--train_text_encoder_ti): textual
inversion inside DreamBooth, the "pivotal tuning" of diffusers' advanced DreamBooth scripts.

A rare token such as "sks" starts with an embedding the text encoder gives little weight to, so the
UNet alone has to tie the subject to a small change in the conditioning. Training that token's
embedding lets the text side carry the subject too, while the rest of the encoder stays frozen and
the class prompt's conditioning does not move.

Unlike diffusers' scripts no tokens are added to the vocabulary: the identifier's own rows are
trained in place. Saved models keep the base's shapes (a full fine-tune's single file loads in
A1111 and ComfyUI as before), and a LoRA run writes the rows as an embedding file named after the
word, which those hosts load as a textual-inversion embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

EMBEDDINGS_DIR = "embeddings"
PUNCTUATION = ".,;:!?()[]{}\"'"


def identifier_words(instance_prompt: Optional[str], class_prompt: Optional[str],
                     token_abstraction: Optional[str] = None) -> list[str]:
    """The words whose embeddings are trained: --token_abstraction, or what the instance prompt adds
    to the class prompt ("a photo of sks dog" vs "a photo of dog": ["sks"])."""
    if token_abstraction:
        return [w.strip() for w in token_abstraction.split(",") if w.strip()]
    if not instance_prompt or not class_prompt:
        return []
    class_words = set(prompt_words(class_prompt.lower()))
    return [w for w in prompt_words(instance_prompt) if w.lower() not in class_words]


def prompt_words(prompt: str) -> list[str]:
    # punctuation is not part of the identifier: "sks dog, smiling" adds "sks" and "smiling", not "dog,"
    return [w for w in (w.strip(PUNCTUATION) for w in prompt.split()) if w]


def identifier_token_ids(tokenizer, words: list[str]) -> list[int]:
    ids: list[int] = []
    for word in words:
        for token in tokenizer(word, add_special_tokens=False).input_ids:
            if token not in ids:
                ids.append(token)
    return ids


class TrainedTokenRows(torch.nn.Module):
    """An embedding table whose rows for `token_ids` are a trainable fp32 parameter; the table stays frozen.

    Only those rows get gradients and optimizer state (for SD's 49,408 x 768 table: 768 numbers per
    token instead of 38 M), and no weight decay or optimizer step can touch the other rows.
    """

    def __init__(self, table: torch.nn.Embedding, token_ids: list[int]):
        super().__init__()
        self.table = table
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)
        self.rows = torch.nn.Parameter(table.weight.detach()[token_ids].float().clone())

    @property
    def weight(self) -> torch.Tensor:  # read by code that asks an embedding for its dtype or size
        return self.table.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.table(input_ids)
        match = input_ids.unsqueeze(-1) == self.token_ids  # the buffer moves with the module
        rows = self.rows[match.int().argmax(-1)].to(out.dtype)
        return torch.where(match.any(-1, keepdim=True), rows, out)

    @torch.no_grad()
    def merged(self) -> torch.nn.Embedding:
        """The plain table with the trained rows written into it."""
        self.table.weight[self.token_ids] = self.rows.to(self.table.weight)
        return self.table


def install_token_rows(text_encoder, tokenizer, words: list[str]) -> TrainedTokenRows:
    """Make the identifier's rows of `text_encoder`'s token embedding trainable (and nothing else)."""
    ids = identifier_token_ids(tokenizer, words)
    if not ids:
        from ..errors import ConfigError
        raise ConfigError(f"--train_text_encoder_ti: the tokenizer turns {words} into no tokens; "
                          "give the identifier with --token_abstraction.")
    rows = TrainedTokenRows(text_encoder.get_input_embeddings(), ids)
    text_encoder.set_input_embeddings(rows)
    return rows


def merge_token_rows(text_encoder) -> None:
    """Write trained rows back into the encoder's own table (so it saves as the base's layout), if it has any."""
    embedding = text_encoder.get_input_embeddings()
    if isinstance(embedding, TrainedTokenRows):
        text_encoder.set_input_embeddings(embedding.merged())


def trained_token_rows(text_encoder) -> Optional[torch.Tensor]:
    """The identifier's rows as training has them now (the table is left as it is), or None if the encoder
    has none installed."""
    embedding = text_encoder.get_input_embeddings()
    return embedding.rows.detach().float().cpu() if isinstance(embedding, TrainedTokenRows) else None


def save_embedding_files(out: Path, words: list[str], tokenizers: list, rows: list[torch.Tensor]) -> list[Path]:
    """OUTPUT_DIR/embeddings/<word>.safetensors, one per identifier word, in the textual-inversion
    layout A1111 and ComfyUI read: {"emb_params": vectors} for SD 1.x/2.x, {"clip_l", "clip_g"} for SDXL.
    Put the file in the host's embeddings folder; the word in a prompt then uses the trained vectors."""
    from safetensors.torch import save_file
    from ..fsutil import atomic_file

    all_ids = [identifier_token_ids(tokenizer, words) for tokenizer in tokenizers]  # the order of `rows`
    paths = []
    for word in words:
        vectors = [torch.stack([encoder_rows[ids.index(t)] for t in identifier_token_ids(tokenizer, [word])])
                   for tokenizer, encoder_rows, ids in zip(tokenizers, rows, all_ids)]
        tensors = {"emb_params": vectors[0]} if len(vectors) == 1 else {"clip_l": vectors[0], "clip_g": vectors[1]}
        target = out / EMBEDDINGS_DIR / f"{word}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as tmp:
            save_file(tensors, str(tmp))
        paths.append(target)
    return paths


def load_embedding_files(pipe, folder: Path) -> list[str]:
    """Write the vectors of save_embedding_files' files back into `pipe`'s token rows of each file's
    word (the layout training left them in); returns the words. No folder: nothing to do."""
    from safetensors.torch import load_file

    words = []
    for path in sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []:
        tensors, word = load_file(str(path)), path.stem
        pairs = [(pipe.tokenizer, pipe.text_encoder, tensors.get("emb_params", tensors.get("clip_l")))]
        if getattr(pipe, "text_encoder_2", None) is not None:
            pairs.append((pipe.tokenizer_2, pipe.text_encoder_2, tensors.get("clip_g")))
        for tokenizer, encoder, vectors in pairs:
            ids = identifier_token_ids(tokenizer, [word])
            if vectors is None or len(ids) != vectors.shape[0]:
                from ..errors import ModelLoadError
                raise ModelLoadError(f"{path}: {0 if vectors is None else vectors.shape[0]} vectors for '{word}', "
                                     f"which the tokenizer splits into {len(ids)} tokens; it was not written by "
                                     "--train_text_encoder_ti for this model.")
            table = encoder.get_input_embeddings().weight
            with torch.no_grad():
                table[torch.tensor(ids)] = vectors.to(table)
        words.append(word)
    return words
