"""CLIP-style pretraining of the toy text encoder: the loss is CLIP's, and training on captions whose
images differ makes the encoder tell the captions apart (then the UNet stage leaves it frozen)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from sksbooth.toyworld.pretrain import PretrainConfig, StepBudget, build_text_encoder, train_denoiser
from sksbooth.toyworld.text_pretrain import contrastive_loss, pretrain_text_encoder, same_caption_targets


def test_same_caption_targets_share_the_weight_among_repeats():
    ids = torch.tensor([[1, 2], [1, 3], [1, 2]])
    targets = same_caption_targets(ids)
    assert torch.allclose(targets.sum(dim=1), torch.ones(3))
    assert targets[0].tolist() == [0.5, 0.0, 0.5] and targets[1].tolist() == [0.0, 1.0, 0.0]


def test_contrastive_loss_is_low_for_matching_pairs_and_high_for_shuffled_ones():
    torch.manual_seed(0)
    features = torch.randn(16, 8)
    targets = torch.eye(16)
    matched = contrastive_loss(features, features, targets, temperature=0.07)
    shuffled = contrastive_loss(features, features[torch.randperm(16)], targets, temperature=0.07)
    assert matched < 0.1 < 2.0 < shuffled


def shape_captions_and_latents(count: int = 64):
    """Two 'shapes': captions differing in one word, latents differing in sign."""
    from sksbooth.toyworld.pretrain import build_tokenizer, tokenize
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    which = torch.arange(count) % 2
    ids = tokenize(tokenizer, [f"a photo of a {'circle' if w else 'square'}" for w in which.tolist()])
    latents = torch.randn(count, 4, 8, 8) * 0.3 + (which * 2 - 1).float()[:, None, None, None]
    return ids, latents


def state_similarity(text_encoder, ids) -> float:
    with torch.no_grad():
        states = text_encoder(ids[:2])[0].flatten(1)
    return F.cosine_similarity(states[0], states[1], dim=0).item()


def test_pretraining_pulls_apart_captions_whose_images_differ():
    ids, latents = shape_captions_and_latents()
    torch.manual_seed(0)
    encoder = build_text_encoder(PretrainConfig(text_width=32))
    before = state_similarity(encoder, ids)
    steps, loss = pretrain_text_encoder(encoder, latents, ids, StepBudget(30, 0), seed=0, log=lambda _: None,
                                        batch_size=16, lr=3e-3)
    assert steps == 30 and loss < torch.log(torch.tensor(16.0)).item()  # chance: all 16 alike
    assert state_similarity(encoder.eval(), ids) < before - 0.1  # measured: 0.998 -> 0.846


def test_a_pretrained_text_encoder_stays_frozen_while_the_unet_trains():
    ids, latents = shape_captions_and_latents(8)
    config = PretrainConfig(unet_steps=3, unet_batch_size=4, text_width=32, unet_channels=(32, 64), text_encoder_steps=1)
    encoder = build_text_encoder(config)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    _, trained, _, loss, _ = train_denoiser(latents, ids, ids[0], config, log=lambda _: None, text_encoder=encoder)
    assert loss > 0 and trained is encoder and all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())


def test_with_a_joint_lr_the_pretrained_encoder_trains_on_with_the_unet():
    ids, latents = shape_captions_and_latents(8)
    config = PretrainConfig(unet_steps=3, unet_batch_size=4, text_width=32, unet_channels=(32, 64), text_encoder_steps=1,
                            text_encoder_joint_lr=1e-3)
    encoder = build_text_encoder(config)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    _, trained, _, _, _ = train_denoiser(latents, ids, ids[0], config, log=lambda _: None, text_encoder=encoder)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2


def test_made_md_records_how_the_text_encoder_was_pretrained():
    import dataclasses
    from sksbooth.toyworld.make import made_md, parse
    _, config, _ = parse(["dest", "--text_encoder_minutes", "5"])
    assert config.contrastive_text_encoder and not PretrainConfig().contrastive_text_encoder
    made = {"config": dataclasses.asdict(config), "minutes": 40.0, "vae_minutes": 9.0, "vae_steps": 1, "unet_steps": 2,
            "final_loss": 0.1, "command": "dreambooth toyworld-pretrain DEST", "text_encoder_steps": 700,
            "text_encoder_loss": 2.0}
    assert "CLIP-style (700 steps" in made_md(made) and "then frozen" in made_md(made)
    made["config"]["text_encoder_joint_lr"] = 1e-4
    assert "then trained with the UNet at lr 0.0001" in made_md(made)
