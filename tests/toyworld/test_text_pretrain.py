"""CLIP-style pretraining of the toy text encoder: the loss is CLIP's, and training on captions whose
images differ makes the encoder tell the captions apart (then the UNet stage leaves it frozen)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from sksbooth.toyworld.pretrain import CaptionStates, PretrainConfig, StepBudget, build_text_encoder, train_denoiser
from sksbooth.toyworld.text_pretrain import (caption_text_features, contrastive_loss, pretrain_text_encoder,
                                             same_caption_targets)


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


def pooled_similarity(text_encoder, ids, pooling: str) -> float:
    with torch.no_grad():
        features = caption_text_features(text_encoder, ids[:2], torch.nn.Identity(), pooling)
    return F.cosine_similarity(features[0], features[1], dim=0).item()


@pytest.mark.parametrize("pooling", ["eos", "mean"])
def test_pretraining_pulls_apart_captions_whose_images_differ(pooling):
    ids, latents = shape_captions_and_latents()
    torch.manual_seed(0)
    encoder = build_text_encoder(PretrainConfig(text_width=32))
    before = pooled_similarity(encoder, ids, pooling)
    steps, loss = pretrain_text_encoder(encoder, latents, ids, StepBudget(30, 0), seed=0, log=lambda _: None,
                                        batch_size=16, lr=3e-3, pooling=pooling)
    assert steps == 30 and loss < torch.log(torch.tensor(16.0)).item()  # chance: all 16 alike
    # measured: eos 0.993 -> 0.241, mean 0.999 -> 0.814
    assert pooled_similarity(encoder.eval(), ids, pooling) < before - 0.1


def test_a_pretrained_text_encoder_stays_frozen_while_the_unet_trains():
    ids, latents = shape_captions_and_latents(8)
    config = PretrainConfig(unet_steps=3, unet_batch_size=4, text_width=32, unet_channels=(32, 64), text_encoder_steps=1)
    encoder = build_text_encoder(config)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    _, trained, _, loss, *_ = train_denoiser(latents, ids, ids[0], config, log=lambda _: None, text_encoder=encoder)
    assert loss > 0 and trained is encoder and all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())


def test_with_a_joint_lr_the_pretrained_encoder_trains_on_with_the_unet():
    ids, latents = shape_captions_and_latents(8)
    config = PretrainConfig(unet_steps=3, unet_batch_size=4, text_width=32, unet_channels=(32, 64), text_encoder_steps=1,
                            text_encoder_joint_lr=1e-3)
    encoder = build_text_encoder(config)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    _, trained, *_ = train_denoiser(latents, ids, ids[0], config, log=lambda _: None, text_encoder=encoder)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2


def test_made_md_records_how_the_text_encoder_was_pretrained():
    import dataclasses
    from sksbooth.toyworld.make import made_md, parse
    _, config, _ = parse(["dest", "--text_encoder_minutes", "5"])
    assert config.pretrains_text_encoder and not PretrainConfig().pretrains_text_encoder
    made = {"config": dataclasses.asdict(config), "minutes": 40.0, "vae_minutes": 9.0, "vae_steps": 1, "unet_steps": 2,
            "final_loss": 0.1, "command": "dreambooth toyworld-pretrain DEST", "text_encoder_steps": 700,
            "text_encoder_loss": 2.0}
    assert "CLIP-style (700 steps" in made_md(made) and "then frozen" in made_md(made)
    assert "caption vector: the mean state" in made_md(made)
    made["config"]["text_encoder_pooling"] = "eos"
    assert "caption vector: the end-of-text state" in made_md(made)
    made["config"]["text_encoder_joint_lr"] = 1e-4
    assert "then trained with the UNet at lr 0.0001" in made_md(made)


def test_eos_pooling_reads_the_state_at_the_first_end_of_text_token():
    ids, _ = shape_captions_and_latents(4)
    torch.manual_seed(0)
    encoder = build_text_encoder(PretrainConfig(text_width=32)).eval()
    identity = torch.nn.Identity()
    first_eos = (ids == encoder.config.eos_token_id).int().argmax(dim=1)
    with torch.no_grad():
        states = encoder(ids)[0]
        eos = caption_text_features(encoder, ids, identity, "eos")
        mean = caption_text_features(encoder, ids, identity, "mean")
    assert first_eos.tolist() == [6, 6, 6, 6]  # <bos> a photo of a circle <eos>
    assert torch.allclose(eos, states[torch.arange(4), first_eos], atol=1e-6)
    assert torch.allclose(mean, states.mean(dim=1), atol=1e-6) and not torch.allclose(eos, mean, atol=1e-3)


def test_a_frozen_encoders_states_are_computed_once_per_distinct_caption():
    ids, _ = shape_captions_and_latents(8)
    empty = ids[0].clone()
    empty[2:] = ids[0, -1]  # <bos> <eos> <pad>...: the empty caption
    torch.manual_seed(0)
    encoder = build_text_encoder(PretrainConfig(text_width=32)).eval()
    cache = CaptionStates(encoder, ids, empty, bf16=False)
    with torch.no_grad():
        assert len(cache.states) == 3  # circle, square and the empty caption
        assert torch.allclose(cache.states[cache.index], encoder(ids)[0], atol=1e-5)
        assert torch.allclose(cache.states[cache.empty], encoder(empty[None])[0][0], atol=1e-5)


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="text_encoder_pooling"):
        PretrainConfig(text_encoder_pooling="max")
