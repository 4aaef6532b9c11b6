"""--train_text_encoder_ti: the identifier's token embedding trains with the UNet; nothing else of the
text encoder moves; the rows are saved where A1111, ComfyUI and our generate read them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from sksbooth.config import GenerateConfig
from sksbooth.errors import ConfigError
from sksbooth.generate import generate
from sksbooth.events import StopFlag
from sksbooth.models.pipeline import load_pipeline
from sksbooth.train.loop import train
from sksbooth.train.token_embedding import TrainedTokenRows, identifier_words

PROMPTS = dict(instance_prompt="a photo of sks dog", class_prompt="a photo of dog")


def embedding_table(folder: Path) -> torch.Tensor:
    return CLIPTextModel.from_pretrained(folder / "text_encoder").get_input_embeddings().weight.detach()


def sks_id(model: Path) -> int:
    (token,) = CLIPTokenizer.from_pretrained(model / "tokenizer")("sks", add_special_tokens=False).input_ids
    return token


def drawn(out: Path, model, lora) -> torch.Tensor:
    import numpy as np
    from PIL import Image
    config = GenerateConfig(model=str(model), lora=str(lora) if lora else None, prompt="a photo of sks dog",
                            num_images=1, num_inference_steps=2, output_dir=str(out), scheduler="DDIM")
    return torch.from_numpy(np.asarray(Image.open(generate(config)[0]), dtype=np.float32))


def ti_config(make_config, tiny_model, instance_dir, out, **kw):
    settings = dict(train_text_encoder_ti=True, text_encoder_lr=5e-2, max_train_steps=4, train_text_encoder_ti_frac=1.0)
    return make_config(tiny_model, instance_dir, out, **{**settings, **PROMPTS, **kw})


def test_identifier_is_what_the_instance_prompt_adds_to_the_class_prompt():
    assert identifier_words("a photo of sks dog", "a photo of dog") == ["sks"]
    assert identifier_words("a photo of sks dog", "a photo of dog", "sks, dog") == ["sks", "dog"]
    assert identifier_words("a photo of sks dog", None) == []
    assert identifier_words("a photo of sks dog, smiling.", "a photo of dog") == ["sks", "smiling"]


def test_only_the_identifier_rows_get_gradients_and_the_others_read_the_table():
    table = torch.nn.Embedding(10, 4)
    rows = TrainedTokenRows(table, [3, 7])
    table.requires_grad_(False)
    ids = torch.tensor([[1, 3, 7, 3, 2]])
    out = rows(ids)
    torch.testing.assert_close(out, table(ids))  # starts from the table's own rows
    out.sum().backward()
    assert rows.rows.grad.tolist() == [[2.0] * 4, [1.0] * 4]  # token 3 twice, token 7 once
    with torch.no_grad():
        rows.rows += 1
    changed = rows(ids)
    assert torch.equal(changed[0, [0, 4]], table(ids)[0, [0, 4]])
    torch.testing.assert_close(changed[0, 1], table.weight[3] + 1)
    merged = rows.merged()
    assert merged is table and torch.equal(merged(ids), changed.detach())


def test_full_fine_tune_trains_the_identifier_row_and_nothing_else_of_the_text_encoder(
        tiny_model, instance_dir, tmp_path, make_config):
    result = train(ti_config(make_config, tiny_model, instance_dir, tmp_path / "out",
                             with_prior_preservation=True, num_class_images=2, class_data_dir=str(tmp_path / "class")))
    base = CLIPTextModel.from_pretrained(Path(tiny_model) / "text_encoder").state_dict()
    tuned = CLIPTextModel.from_pretrained(result.model_path / "text_encoder").state_dict()
    assert tuned.keys() == base.keys()  # the base's layout: no wrapper, no added tokens
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert len(changed) == 1 and changed[0].endswith("embeddings.token_embedding.weight")
    rows_changed = (base[changed[0]] != tuned[changed[0]]).any(dim=1).nonzero().flatten().tolist()
    assert rows_changed == [sks_id(Path(tiny_model))]
    assert (result.output_dir / "lora.safetensors").exists() is False
    single = load_file(next(result.output_dir.glob("*.safetensors")))  # the A1111/ComfyUI file
    (key,) = [k for k in single if k.endswith("token_embedding.weight")]
    assert single[key].shape == base[changed[0]].shape


def test_lora_run_writes_an_embedding_file_that_generate_applies(tiny_model, instance_dir, tmp_path, make_config):
    out = tmp_path / "lora"
    result = train(ti_config(make_config, tiny_model, instance_dir, out, use_lora=True))
    assert result.model_path == out / "lora.safetensors"
    vectors = load_file(out / "embeddings" / "sks.safetensors")
    base_row = embedding_table(Path(tiny_model))[sks_id(Path(tiny_model))]
    assert vectors.keys() == {"emb_params"} and vectors["emb_params"].shape == (1, base_row.shape[0])
    assert not torch.allclose(vectors["emb_params"][0], base_row)
    pipe = load_pipeline(str(out))
    loaded = pipe.text_encoder.get_input_embeddings().weight[sks_id(Path(tiny_model))]
    torch.testing.assert_close(loaded, vectors["emb_params"][0])
    # `--lora FILE` on the base draws what the training folder draws: the embedding comes with the file
    implicit, explicit = (drawn(tmp_path / name, model, lora) for name, model, lora in
                          (("g1", out, None), ("g2", tiny_model, result.model_path)))
    assert torch.equal(implicit, explicit)


def test_resumed_run_ends_with_the_same_identifier_row(tiny_model, instance_dir, tmp_path, make_config):
    straight = train(ti_config(make_config, tiny_model, instance_dir, tmp_path / "straight"))
    stop = StopFlag()
    stop_at_2 = lambda e: stop.request("test") if e.kind == "step" and e.step == 2 else None
    assert train(ti_config(make_config, tiny_model, instance_dir, tmp_path / "resumed"), [stop_at_2], stop).stopped
    resumed = train(ti_config(make_config, tiny_model, instance_dir, tmp_path / "resumed",
                              resume_from_checkpoint="latest"))
    token = sks_id(Path(tiny_model))
    a, b = embedding_table(straight.model_path)[token], embedding_table(resumed.model_path)[token]
    assert not torch.equal(a, embedding_table(Path(tiny_model))[token])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_conflicting_or_missing_identifier_is_a_config_error(tiny_model, instance_dir, tmp_path, make_config):
    with pytest.raises(ConfigError, match="Keep one"):
        ti_config(make_config, tiny_model, instance_dir, tmp_path, train_text_encoder=True)
    with pytest.raises(ConfigError, match="needs the identifier"):
        ti_config(make_config, tiny_model, instance_dir, tmp_path, class_prompt=None)
    with pytest.raises(ConfigError, match="not a word of --instance_prompt"):
        ti_config(make_config, tiny_model, instance_dir, tmp_path, token_abstraction="zwx")


def test_the_embedding_stops_training_after_its_fraction_of_the_steps(tiny_model, instance_dir, tmp_path, make_config):
    token = sks_id(Path(tiny_model))

    def row(name, steps, frac):
        result = train(ti_config(make_config, tiny_model, instance_dir, tmp_path / name, max_train_steps=steps,
                                 train_text_encoder_ti_frac=frac))
        return embedding_table(result.model_path)[token]

    half_of_4, all_of_2, all_of_4 = row("half4", 4, 0.5), row("all2", 2, 1.0), row("all4", 4, 1.0)
    # same seed, constant lr: the first two steps of every run are the same
    assert torch.equal(half_of_4, all_of_2)
    assert not torch.equal(half_of_4, all_of_4)
    assert not torch.equal(all_of_2, embedding_table(Path(tiny_model))[token])
