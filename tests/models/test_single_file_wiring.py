"""Single files in the trainer, generator and CLI: train from a .safetensors base; the output
folder gets OUTPUT_DIR/<name>.safetensors beside the diffusers model/ folder; `dreambooth convert`."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from sksbooth.cli import main as cli_main
from sksbooth.config import GenerateConfig, TrainConfig, config_to_dict
from sksbooth.models import single_file as sf
from sksbooth.models.hashing import file_sha256


def metadata(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def same_weights(a, b, dtype=None):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sb[k], sa[k].to(dtype) if dtype is not None and sa[k].is_floating_point() else sa[k]) for k in sa)


def test_train_from_a_single_file_base_writes_a_single_file(tiny_model, instance_dir, tmp_path, capsys):
    from sksbooth.train.loop import train
    base, base_sha = sf.diffusers_folder_to_single_file(tiny_model, tmp_path / "models" / "tiny-base.safetensors",
                                                        precision="fp32")
    out = tmp_path / "sks-dog"
    config = TrainConfig(pretrained_model_name_or_path=str(base), instance_data_dir=str(instance_dir),
                         instance_prompt="a photo of sks dog", output_dir=str(out), resolution=64,
                         train_batch_size=1, max_train_steps=2, learning_rate=1e-4, lr_warmup_steps=0,
                         checkpointing_steps=1000, seed=0, save_precision="fp32")
    result = train(config)
    assert (out / "model" / "model_index.json").is_file()  # the diffusers folder stays
    single = out / "sks-dog.safetensors"
    meta = metadata(single)
    assert meta["sksbooth.base_model"] == "tiny-base" and meta["sksbooth.base_model_hash"] == base_sha[:10]
    assert meta["sksbooth.instance_prompt"] == "a photo of sks dog" and meta["sksbooth.steps"] == "2"
    saved = json.loads(meta["sksbooth.config"])  # the run's config (as resolved by the trainer)
    assert set(saved) == set(config_to_dict(config))
    assert saved["pretrained_model_name_or_path"] == str(base) and saved["max_train_steps"] == 2
    assert meta["sksbooth.version"] and meta["modelspec.architecture"] == "stable-diffusion-v1"
    # the single file holds exactly the trained weights of model/
    from diffusers import StableDiffusionPipeline
    folder = StableDiffusionPipeline.from_pretrained(str(result.model_path))
    model = sf.load_single_file(single)
    for name in ("unet", "vae", "text_encoder"):
        assert same_weights(getattr(folder, name), getattr(model, name)), name
    # and it is a base model in its own right: generation straight from the file
    from sksbooth.generate import generate
    paths = generate(GenerateConfig(model=str(single), prompt="a photo of sks dog", num_images=1,
                                    num_inference_steps=2, output_dir=str(tmp_path / "gen"), seed=1))
    assert len(paths) == 1 and paths[0].is_file()


def test_no_single_file_when_disabled(tiny_model, tmp_path):
    from sksbooth.models.load import load_components
    from sksbooth.train.save import save_final_model
    parts = load_components(str(tiny_model))
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(tmp_path),
                         instance_prompt="a photo of sks dog", output_dir=str(tmp_path / "out"), save_single_file=False)
    save_final_model(parts, parts.unet, parts.text_encoder, config, tmp_path / "out")
    assert (tmp_path / "out" / "model").is_dir() and not list((tmp_path / "out").glob("*.safetensors"))


def test_cli_convert_both_ways(tiny_model, tmp_path, capsys):
    single = tmp_path / "tiny.safetensors"
    assert cli_main(["convert", str(tiny_model), str(single), "--precision", "fp32"]) == 0
    sha = file_sha256(single)
    assert f"tiny.safetensors [{sha[:10]}]" in capsys.readouterr().out
    assert cli_main(["convert", str(single), str(tmp_path / "back")]) == 0
    from diffusers import StableDiffusionPipeline
    a, b = (StableDiffusionPipeline.from_pretrained(str(p)) for p in (tiny_model, tmp_path / "back"))
    assert all(same_weights(getattr(a, n), getattr(b, n)) for n in ("unet", "vae", "text_encoder"))
    assert cli_main(["convert", str(tiny_model), str(tmp_path / "no-suffix")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"\0" * 16)
    assert cli_main(["convert", str(ckpt), str(tmp_path / "x")]) == 2
    assert "--allow_pickle_checkpoints" in capsys.readouterr().err


def test_cli_train_names_the_single_file_with_its_a1111_hash(tiny_model, instance_dir, tmp_path, capsys):
    out = tmp_path / "my-dog"
    code = cli_main(["train", "--pretrained_model_name_or_path", str(tiny_model), "--instance_data_dir",
                     str(instance_dir), "--instance_prompt", "a photo of sks dog", "--output_dir", str(out),
                     "--resolution", "64", "--train_batch_size", "1", "--max_train_steps", "1",
                     "--lr_warmup_steps", "0", "--save_precision", "fp16"])
    assert code == 0
    single = out / "my-dog.safetensors"
    printed = capsys.readouterr().out
    assert f"my-dog.safetensors [{file_sha256(single)[:10]}]" in printed
    assert metadata(single)["sksbooth.precision"] == "fp16"
