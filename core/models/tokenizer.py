"""The real CLIP BPE tokenizer, built offline.

OpenAI's BPE vocabulary ships inside the `openai-clip` package
(`clip/bpe_simple_vocab_16e6.txt.gz`); we read that data file and write the
`vocab.json` + `merges.txt` pair that transformers' CLIPTokenizer loads. The result
is token-for-token identical to the tokenizer of SD 1.x (openai/clip-vit-large-patch14).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from ..errors import ModelLoadError

# 256 byte tokens + 256 end-of-word byte tokens + merges + 2 specials = 49408
NUM_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bpe_vocab_path() -> Path:
    spec = importlib.util.find_spec("clip")  # locating the package does not import it
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("The CLIP BPE vocabulary is missing: install the 'openai-clip' package "
                             "(pip install openai-clip), which ships it.")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found; reinstall the 'openai-clip' package.")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    with gzip.open(bpe_vocab_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1:NUM_MERGES + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(dest: Path, model_max_length: int = 77) -> Path:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, configs) into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (dest / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "do_lower_case": True, "errors": "replace", **specials}
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return dest
