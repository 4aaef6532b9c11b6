"""The offline CLIP tokenizer is OpenAI's CLIP BPE, as in SD 1.x."""

from __future__ import annotations

import json

import pytest
from transformers import CLIPTokenizer

from sksbooth.models.tokenizer import BOS, EOS, bpe_vocab_path, write_clip_tokenizer

A_PHOTO_OF_A_DOG = [49406, 320, 1125, 539, 320, 1929, 49407]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tok") / "clip"))


def check_clip(tok):
    assert tok("a photo of a dog").input_ids == A_PHOTO_OF_A_DOG
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407 and tok.pad_token_id == 49407
    padded = tok("a photo of a dog", padding="max_length", max_length=tok.model_max_length,
                 truncation=True).input_ids
    assert len(padded) == 77
    assert padded[:7] == A_PHOTO_OF_A_DOG and set(padded[7:]) == {49407}
    # long prompts are truncated to 77 and still end with the end token
    long = tok(" ".join(["dog"] * 200), padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_tiny_model_tokenizer_is_clip(tiny_model):
    check_clip(CLIPTokenizer.from_pretrained(tiny_model / "tokenizer"))


def test_written_tokenizer_is_clip(written):
    check_clip(written)


def test_lowercase_punctuation_and_round_trip(written):
    assert written("A PHOTO of a Dog").input_ids == A_PHOTO_OF_A_DOG  # CLIP lower-cases
    ids = written("a photo of sks dog, on the beach!").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407
    assert written.decode(ids, skip_special_tokens=True).strip() == "a photo of sks dog , on the beach !"


def test_files_written(tmp_path):
    dest = write_clip_tokenizer(tmp_path / "t", model_max_length=64)
    vocab = json.loads((dest / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab[BOS] == 49406 and vocab[EOS] == 49407
    assert vocab["a</w>"] == 320 and vocab["dog</w>"] == 1929
    assert sorted(vocab.values()) == list(range(49408))  # dense, no duplicates
    merges = (dest / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) - 1 == 49152 - 256 - 2
    assert CLIPTokenizer.from_pretrained(dest).model_max_length == 64


def test_vocabulary_comes_from_the_openai_clip_package():
    path = bpe_vocab_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.is_file()
