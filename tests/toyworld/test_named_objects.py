"""Named objects: fixed looks called by words of their own, which the base learns and DreamBooth's "sks" is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from sksbooth.toyworld.named_objects import colour_distance, make_named_dataset, named_designs, pick_names
from sksbooth.toyworld.pretrain import PretrainConfig, build_tokenizer, pretrain
from sksbooth.toyworld.world import SHAPES, SIZE, SUBJECT_BODY, SUBJECT_HEAD, make_dataset


def test_designs_are_fixed_by_seed_cover_every_shape_and_keep_away_from_the_subject():
    designs = named_designs(8, seed=0)
    assert designs == named_designs(8, seed=0) and designs != named_designs(8, seed=1)
    assert [d.shape for d in designs] == list(SHAPES) * 2
    assert [d.stripe is not None for d in designs if d.shape == "toy"] == [True, False]
    for d in designs:
        for colour in (d.body, d.second):
            assert colour_distance(colour, SUBJECT_BODY) > 100 and colour_distance(colour, SUBJECT_HEAD) > 100


def test_each_image_draws_its_captions_design():
    designs = named_designs(4, seed=0)
    images, captions = make_named_dataset(designs, ["alfa", "brav", "char", "delt"], 40, seed=0)
    again, _ = make_named_dataset(designs, ["alfa", "brav", "char", "delt"], 40, seed=0)
    assert np.array_equal(images, again) and images.shape == (40, SIZE, SIZE, 3)
    for k, (image, caption) in enumerate(zip(images, captions)):
        design = designs[k % 4]
        assert caption.startswith(f"a photo of a {['alfa', 'brav', 'char', 'delt'][k % 4]} {design.shape}")
        pixels = image.reshape(-1, 3).astype(int)
        for colour in (design.body, design.second):  # both of its colours are drawn (jittered by at most 6)
            assert (np.abs(pixels - colour).max(axis=1) <= 6).sum() >= 4, (k, caption)
    assert sum(c.endswith("background") for c in captions) > 20  # most captions name the background too


def test_names_are_one_unknown_token_each_and_never_sks(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    world_words = {w for c in make_dataset(300, seed=0)[1] for w in c.split()}
    names = pick_names(tokenizer, 12, world_words, seed=0)
    assert names == pick_names(tokenizer, 12, world_words, seed=0) and len(set(names)) == 12
    assert not set(names) & (world_words | {"sks"})
    assert all(len(tokenizer(n, add_special_tokens=False).input_ids) == 1 for n in names)
    assert "toy" not in pick_names(tokenizer, 12, world_words | {"toy"}, seed=0)


def weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_the_unet_and_the_text_encoder_learn_the_named_objects_and_sks_stays_unknown(tmp_path):
    tiny = dict(num_images=32, vae_steps=2, vae_batch_size=4, unet_steps=3, unet_batch_size=4, text_width=32,
                unet_channels=(32, 64), text_encoder_steps=3, text_encoder_objective="words",
                text_encoder_unknown_share=0.3)
    pretrain(tmp_path / "plain", PretrainConfig(**tiny), log=lambda _: None)
    logged = []
    made = pretrain(tmp_path / "named", PretrainConfig(**tiny, named_objects=4, named_object_share=0.5),
                    log=logged.append)
    assert len(made["named_objects"]) == 4 and any("32 images of 4 designs" in line for line in logged)
    assert {d["shape"] for d in made["named_objects"].values()} == set(SHAPES)
    tokenizer = build_tokenizer(tmp_path / "tokenizer")
    row = {w: tokenizer(w, add_special_tokens=False).input_ids[0] for w in [*made["named_objects"], "sks"]}
    key = next(k for k in weights(tmp_path / "plain" / "text_encoder" / "model.safetensors") if "token_embedding" in k)
    plain, named = (weights(tmp_path / b / "text_encoder" / "model.safetensors")[key] for b in ("plain", "named"))
    # the names' embeddings learned, as the world's words do; "sks" never appears and stays as it was
    assert all(not torch.equal(plain[row[w]], named[row[w]]) for w in made["named_objects"])
    assert torch.equal(plain[row["sks"]], named[row["sks"]])
    plain, named = (weights(tmp_path / b / "unet" / "diffusion_pytorch_model.safetensors") for b in ("plain", "named"))
    assert any(not torch.equal(plain[k], named[k]) for k in plain)


def test_made_md_names_the_named_objects_and_the_options_are_checked():
    import pytest
    import dataclasses
    from sksbooth.toyworld.make import made_md, parse
    _, config, _ = parse(["dest", "--named_objects", "2", "--named_object_share", "0.2"])
    made = {"config": dataclasses.asdict(config), "minutes": 40.0, "vae_minutes": 9.0, "vae_steps": 1,
            "unet_steps": 2, "final_loss": 0.1, "command": "dreambooth toyworld-pretrain DEST"}
    assert "named objects" not in made_md(made)  # a record without them (an older base)
    made["named_objects"] = {"uci": {"shape": "toy"}, "agos": {"shape": "circle"}}
    assert "20% of the UNet's images show one of 2 fixed looks" in made_md(made)
    assert '(agos, uci: "a photo of a agos circle")' in made_md(made)
    with pytest.raises(ValueError, match="named_object"):
        PretrainConfig(named_objects=4, named_object_share=1.0)
