"""The word loss keeps the jointly trained text encoder from merging two caption words."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from sksbooth.toyworld.pretrain import PretrainConfig, build_text_encoder, build_tokenizer, tokenize
from sksbooth.toyworld.token_loss import TokenReconstruction, caption_positions, inverse_document_frequency

CAPTIONS = ["a photo of a red circle on a blue background", "a photo of a red square on a blue background"]


def test_only_the_caption_and_its_first_end_of_text_count():
    eos = 49407
    ids = torch.tensor([[49406, 320, 1125, eos, eos, eos], [49406, eos, eos, eos, eos, eos]])
    assert caption_positions(ids, eos).tolist() == [[True, True, True, True, False, False],
                                                    [True, True, False, False, False, False]]


def shape_word_similarity(text_encoder, ids: torch.Tensor, position: int) -> float:
    with torch.no_grad():
        states = text_encoder(ids)[0]
    return F.cosine_similarity(states[0, position], states[1, position], dim=0).item()


def merged_encoder(ids: torch.Tensor, position: int):
    """A tiny encoder that reads "circle" and "square" as one word, as joint training from scratch did."""
    torch.manual_seed(0)
    text_encoder = build_text_encoder(PretrainConfig(text_width=32))
    with torch.no_grad():
        embeddings = text_encoder.get_input_embeddings().weight
        embeddings[ids[1, position]] = embeddings[ids[0, position]]
    return text_encoder


def train_on_word_loss(text_encoder, head: TokenReconstruction, ids: torch.Tensor, steps: int = 60) -> list[float]:
    opt = torch.optim.AdamW(list(text_encoder.parameters()) + list(head.parameters()), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = head(text_encoder(ids)[0], ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_the_own_word_loss_pulls_two_merged_words_apart(tmp_path):
    ids = tokenize(build_tokenizer(tmp_path), CAPTIONS)
    position = int((ids[0] != ids[1]).nonzero()[0])  # where "circle" and "square" stand
    text_encoder = merged_encoder(ids, position)
    assert shape_word_similarity(text_encoder, ids, position) > 0.999
    losses = train_on_word_loss(text_encoder, TokenReconstruction(torch.unique(ids), 32, 49407, "own"), ids)
    assert shape_word_similarity(text_encoder, ids, position) < 0.5
    assert losses[-1] < losses[0] / 4


def test_the_prefix_word_loss_makes_later_states_name_the_shape(tmp_path):
    ids = tokenize(build_tokenizer(tmp_path), CAPTIONS)
    position = int((ids[0] != ids[1]).nonzero()[0])
    text_encoder = merged_encoder(ids, position)
    vocabulary = torch.unique(ids)
    world = tokenize(build_tokenizer(tmp_path), CAPTIONS + ["a photo of a green triangle"])
    weights = inverse_document_frequency(world, vocabulary)  # "a photo of" 0, the shapes and "blue" log 1.5
    head = TokenReconstruction(vocabulary, 32, 49407, "prefix", weights)
    later = position + 3  # "blue": three words on, it must still say which shape came before it
    assert shape_word_similarity(text_encoder, ids, later) > 0.999
    losses = train_on_word_loss(text_encoder, head, ids)
    with torch.no_grad():
        logits = F.normalize(text_encoder(ids)[0], dim=-1) @ F.normalize(head.words, dim=-1).T
    circle, square = (int((vocabulary == ids[i, position]).nonzero()) for i in (0, 1))
    for p in (position, later):
        assert logits[0, p, circle] > logits[0, p, square] and logits[1, p, square] > logits[1, p, circle]
    assert shape_word_similarity(text_encoder, ids, later) < 0.99
    assert losses[-1] < losses[0] / 2  # its soft targets keep it above zero


@pytest.mark.parametrize("padding", [False, True])
def test_with_padding_the_padding_states_name_the_caption_too(tmp_path, padding):
    ids = tokenize(build_tokenizer(tmp_path), CAPTIONS)
    position = int((ids[0] != ids[1]).nonzero()[0])
    text_encoder = merged_encoder(ids, position)
    vocabulary = torch.unique(ids)
    world = tokenize(build_tokenizer(tmp_path), CAPTIONS + ["a photo of a green triangle"])
    head = TokenReconstruction(vocabulary, 32, 49407, "prefix", inverse_document_frequency(world, vocabulary),
                               padding=padding)
    pad = 76  # the last state, far past both captions' end-of-text tokens
    assert shape_word_similarity(text_encoder, ids, pad) > 0.999
    train_on_word_loss(text_encoder, head, ids)
    with torch.no_grad():
        logits = F.normalize(text_encoder(ids)[0], dim=-1) @ F.normalize(head.words, dim=-1).T
    circle, square = (int((vocabulary == ids[i, position]).nonzero()) for i in (0, 1))
    named = bool(logits[0, pad, circle] > logits[0, pad, square] and logits[1, pad, square] > logits[1, pad, circle])
    assert named == padding
    # without, the padding states are left free and stay alike (0.98 measured; 0.65 with)
    assert (shape_word_similarity(text_encoder, ids, pad) < 0.8) == padding


def test_only_the_prefix_span_can_name_the_caption_from_the_padding():
    with pytest.raises(ValueError, match="padding"):
        TokenReconstruction(torch.arange(5), 8, 49407, "own", padding=True)


def test_prefix_targets_spread_over_the_words_so_far_by_weight():
    from sksbooth.toyworld.token_loss import IGNORE, prefix_word_targets
    targets = prefix_word_targets(torch.tensor([[0, 1, 1, 2, IGNORE]]), torch.tensor([0.0, 1.0, 3.0]))[0]
    assert torch.allclose(targets[:4], torch.tensor([[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0.25, 0.75]]))


def test_words_in_every_caption_weigh_nothing():
    ids = torch.tensor([[7, 1, 2], [7, 1, 3], [7, 4, 3], [7, 4, 2]])
    weights = inverse_document_frequency(ids, torch.tensor([7, 1, 2]))
    assert torch.allclose(weights, torch.tensor([0.0, math.log(2), math.log(2)]))


def test_the_word_loss_option_is_checked():
    with pytest.raises(ValueError, match="text_token_loss_weight"):
        PretrainConfig(text_token_loss_weight=-1)
    with pytest.raises(ValueError, match="freeze_text_encoder"):
        PretrainConfig(text_token_loss_weight=0.1, freeze_text_encoder=True)
    with pytest.raises(ValueError, match="text_encoder_joint_lr"):  # pretrained CLIP-style, then frozen
        PretrainConfig(text_token_loss_weight=0.1, text_encoder_minutes=9)
    assert PretrainConfig(text_token_loss_weight=0.1, text_encoder_minutes=9, text_encoder_joint_lr=1e-4)
    with pytest.raises(ValueError, match="text_token_loss_span"):
        PretrainConfig(text_token_loss_span="all")


def test_the_denoiser_trains_the_word_head_beside_the_unet():
    from sksbooth.toyworld.pretrain import train_denoiser
    config = PretrainConfig(unet_steps=101, unet_batch_size=4, text_width=32, unet_channels=(32, 64),
                            text_token_loss_weight=1.0)
    latents, ids = torch.randn(8, 4, 8, 8), torch.randint(0, 49406, (8, 77))
    ids[:, 0], ids[:, 12:] = 49406, 49407
    lines = []
    torch.manual_seed(0)
    train_denoiser(latents, ids, ids[0], config, log=lines.append)
    word_losses = [float(line.rsplit("word loss ", 1)[1]) for line in lines if "word loss" in line]
    assert len(word_losses) == 2 and word_losses[1] < word_losses[0]


def test_an_unknown_token_goes_inside_the_caption_and_is_marked_for_the_loss():
    from sksbooth.toyworld.token_loss import insert_unknown_tokens, unknown_token_pool
    eos, marker = 49407, 49408
    ids = torch.tensor([[49406, 320, 1125, 539, eos, eos, eos]] * 200)
    pool = unknown_token_pool(torch.unique(ids), 49408, (49406, eos))
    assert not set(pool.tolist()) & {320, 1125, 539, 49406, eos} and len(pool) == 49408 - 5
    put, marked = insert_unknown_tokens(ids, 0.5, pool, eos, marker, torch.Generator().manual_seed(0))
    changed = (put != ids).any(dim=1)
    assert 70 < int(changed.sum()) < 130  # about half
    for row in torch.nonzero(changed).flatten().tolist():
        at = int((marked[row] == marker).nonzero())
        assert 1 <= at <= 3 and put[row, at] in pool  # after bos, before the end-of-text token
        kept = torch.cat([put[row, :at], put[row, at + 1:]])
        assert torch.equal(kept, ids[row, :-1])  # the caption shifted by one, padding cut
    assert torch.equal(put[~changed], ids[~changed]) and torch.equal(marked[~changed], ids[~changed])


def words_pretrained(tmp_path, unknown_share: float):
    from sksbooth.toyworld.pretrain import StepBudget
    from sksbooth.toyworld.text_pretrain import pretrain_on_words
    from sksbooth.toyworld.world import make_dataset
    tokenizer = build_tokenizer(tmp_path)
    _, captions, _ = make_dataset(300, seed=0)
    torch.manual_seed(0)
    text_encoder = build_text_encoder(PretrainConfig(text_width=32))
    lines = []
    steps, loss = pretrain_on_words(text_encoder, tokenize(tokenizer, captions), StepBudget(150, 0), 0, lines.append,
                                    lr=3e-3, unknown_share=unknown_share, batch_size=64)
    first = float(lines[0].rsplit("word loss ", 1)[1])
    assert steps == 150 and loss < first / 2 and "final word loss" in lines[-1]
    return text_encoder.eval(), tokenizer


def caption_similarity(text_encoder, tokenizer, a: str, b: str) -> float:
    """Mean cosine similarity of two captions' states from the first token they differ in to the first
    end-of-text token (the states the loss shapes; the padding after them is left free)."""
    ids = tokenize(tokenizer, [a, b])
    first, end = int((ids[0] != ids[1]).nonzero()[0]), int((ids[0] == 49407).nonzero()[0])
    with torch.no_grad():
        states = text_encoder(ids)[0]
    return F.cosine_similarity(states[0, first:end + 1], states[1, first:end + 1], dim=-1).mean().item()


def test_pretraining_on_words_keeps_shapes_apart_and_an_unknown_token_visible(tmp_path):
    plain, tokenizer = words_pretrained(tmp_path, 0.0)
    named, _ = words_pretrained(tmp_path, 0.5)
    shapes = ("a photo of a red circle on a blue background", "a photo of a red square on a blue background")
    for encoder in (plain, named):  # the states after the shape word still say which shape it was,
        assert caption_similarity(encoder, tokenizer, *shapes) < 0.8
        assert padding_similarity(encoder, tokenizer, *shapes) < 0.8  # the padding states too
    subject = ("a photo of sks toy", "a photo of a toy")
    assert caption_similarity(named, tokenizer, *subject) < caption_similarity(plain, tokenizer, *subject) - 0.05


def padding_similarity(text_encoder, tokenizer, a: str, b: str) -> float:
    """Mean cosine similarity of two captions' states after both their first end-of-text tokens."""
    ids = tokenize(tokenizer, [a, b])
    after = max(int((row == 49407).nonzero()[0]) for row in ids) + 1
    with torch.no_grad():
        states = text_encoder(ids)[0]
    return F.cosine_similarity(states[0, after:], states[1, after:], dim=-1).mean().item()


def test_the_words_objective_is_checked_and_recorded():
    import dataclasses
    from sksbooth.toyworld.make import made_md, parse
    with pytest.raises(ValueError, match="text_encoder_objective"):
        PretrainConfig(text_encoder_objective="captions")
    with pytest.raises(ValueError, match="text_encoder_unknown_share"):
        PretrainConfig(text_encoder_unknown_share=1.0)
    _, config, _ = parse(["dest", "--text_encoder_steps", "150", "--text_encoder_objective", "words",
                          "--text_encoder_unknown_share", "0.3"])
    made = {"config": dataclasses.asdict(config), "minutes": 40.0, "vae_minutes": 9.0, "vae_steps": 1, "unet_steps": 2,
            "final_loss": 0.1, "command": "dreambooth toyworld-pretrain DEST", "text_encoder_steps": 150,
            "text_encoder_loss": 0.5}
    assert "pretrained first on the captions alone (150 steps" in made_md(made)
    assert "30% of captions with an unknown token to name), then frozen" in made_md(made)


def test_toyworld_pretrain_runs_the_words_objective_before_the_unet(tmp_path):
    from sksbooth.toyworld.pretrain import pretrain
    lines = []
    config = PretrainConfig(num_images=16, vae_steps=1, vae_batch_size=4, unet_steps=1, unet_batch_size=4, text_width=32,
                            unet_channels=(32, 64), text_encoder_steps=3, text_encoder_objective="words",
                            text_encoder_unknown_share=0.5)
    made = pretrain(tmp_path / "base", config, log=lines.append)
    assert made["text_encoder_steps"] == 3 and any("3 steps on captions alone" in line for line in lines)
    assert not any("contrastive" in line for line in lines)
