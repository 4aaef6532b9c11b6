"""TrainConfig (and the other job configs): validation messages, files, derived values."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sksbooth.config import (UNSUPPORTED_FLAGS, ClassImagesConfig, GenerateConfig, TrainConfig, config_from_dict,
                             config_to_dict, load_config_file, load_job_file, save_job_file)
from sksbooth.errors import ConfigError

BASE = dict(pretrained_model_name_or_path="models/tiny", instance_data_dir="photos",
            instance_prompt="a photo of sks dog")


def train_config(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, **kw})


def problems(**kw) -> str:
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{**BASE, **kw})
    return str(e.value)


def test_minimal_config_is_valid_with_diffusers_defaults():
    c = train_config()
    assert c.resolution == 512 and c.learning_rate == 5e-6 and c.lr_scheduler == "constant"
    assert c.train_batch_size == 4 and c.num_class_images == 100 and c.prior_loss_weight == 1.0
    assert c.output_dir == "dreambooth-model" and not c.with_prior_preservation
    assert c.validation_scheduler == "DPMSolverMultistepScheduler"


@pytest.mark.parametrize("missing, words", [
    ("pretrained_model_name_or_path", ["--pretrained_model_name_or_path is required", "make-tiny-model"]),
    ("instance_data_dir", ["--instance_data_dir is required", "photos"]),
    ("instance_prompt", ["--instance_prompt is required", "sks"]),
])
def test_missing_required_values(missing, words):
    data = dict(BASE)
    data[missing] = None
    with pytest.raises(ConfigError) as e:
        TrainConfig(**data)
    for w in words:
        assert w in str(e.value)
    data[missing] = ""  # an empty string from a form field is missing too
    with pytest.raises(ConfigError, match=f"--{missing} is required"):
        TrainConfig(**data)


def test_all_problems_are_listed_at_once():
    with pytest.raises(ConfigError) as e:
        TrainConfig(resolution=100, push_to_hub=True)
    msg = str(e.value)
    assert msg.startswith("Invalid training configuration:")
    for flag in ("--pretrained_model_name_or_path", "--instance_data_dir", "--instance_prompt",
                 "--resolution", "--push_to_hub"):
        assert flag in msg


def test_prior_preservation_needs_a_class_prompt():
    msg = problems(with_prior_preservation=True)
    assert "--with_prior_preservation needs --class_prompt" in msg
    c = train_config(with_prior_preservation=True, class_prompt="a photo of dog")
    assert c.with_prior_preservation and c.class_prompt == "a photo of dog"


@pytest.mark.parametrize("name, value", [
    ("push_to_hub", True),
    ("hub_token", "hf_secret"),
    ("hub_model_id", "me/my-dog"),
    ("class_labels_conditioning", "timesteps"),
    ("validation_images", ["a.png", "b.png"]),
])
def test_each_unsupported_diffusers_flag_fails_with_its_reason(name, value):
    msg = problems(**{name: value})
    assert f"--{name}: {UNSUPPORTED_FLAGS[name]}." in msg
    assert len(msg.strip().splitlines()) == 2  # the heading and exactly this problem
    # unset (the default), the flag is fine
    assert getattr(train_config(), name) in (None, False)


def test_unsupported_flag_messages_say_what_to_do_instead():
    assert "upload output_dir yourself" in UNSUPPORTED_FLAGS["push_to_hub"]
    assert set(UNSUPPORTED_FLAGS) == {"push_to_hub", "hub_token", "hub_model_id", "class_labels_conditioning",
                                      "validation_images"}


@pytest.mark.parametrize("name, bad, good", [
    ("lr_scheduler", "cosine_annealing", "cosine_with_restarts"),
    ("mixed_precision", "fp8", "bf16"),
    ("prior_generation_precision", "fp64", "fp16"),
    ("validation_scheduler", "EulerDiscreteScheduler", "DDPMScheduler"),
])
def test_bad_choices(name, bad, good):
    msg = problems(**{name: bad})
    assert f"--{name} must be one of" in msg and repr(bad) in msg and good in msg
    assert getattr(train_config(**{name: good}), name) == good


@pytest.mark.parametrize("resolution", [500, 513, 4, 1020])
def test_resolution_must_be_a_multiple_of_8(resolution):
    assert f"--resolution must be a multiple of 8 (got {resolution})" in problems(resolution=resolution)


@pytest.mark.parametrize("resolution", [8, 64, 512, 768, 1024])
def test_multiples_of_8_are_accepted(resolution):
    assert train_config(resolution=resolution).resolution == resolution


@pytest.mark.parametrize("kw, text", [
    (dict(resolution=0), "--resolution must be at least 1"),
    (dict(train_batch_size=0), "--train_batch_size must be at least 1"),
    (dict(gradient_accumulation_steps=0), "--gradient_accumulation_steps must be at least 1"),
    (dict(max_train_steps=0), "--max_train_steps must be at least 1"),
    (dict(checkpoints_total_limit=0), "--checkpoints_total_limit must be at least 1"),
    (dict(learning_rate=0.0), "--learning_rate > 0"),
    (dict(num_class_images=-1), "--num_class_images and --prior_loss_weight must be >= 0"),
    (dict(train_text_encoder=True, pre_compute_text_embeddings=True), "cannot be used with --pre_compute_text_embeddings"),
    (dict(caption_dropout_rate=1.0), "--caption_dropout_rate must be in [0, 1)"),
    (dict(caption_dropout_rate=-0.1), "--caption_dropout_rate must be in [0, 1)"),
])
def test_other_invalid_values(kw, text):
    assert text in problems(**kw)


def test_config_is_frozen():
    c = train_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.resolution = 256  # type: ignore[misc]


def test_derived_values():
    c = train_config(output_dir="out", validation_prompt="a photo of sks dog | sks dog on a beach|  ", rank=8)
    assert c.resolved_class_data_dir.replace("\\", "/") == "out/class_images"
    assert train_config(class_data_dir="cls").resolved_class_data_dir == "cls"
    assert c.validation_prompts == ["a photo of sks dog", "sks dog on a beach"]
    assert train_config().validation_prompts == []
    assert c.resolved_lora_alpha == 8 and train_config(rank=8, lora_alpha=16).resolved_lora_alpha == 16


def test_config_from_dict_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(ConfigError) as e:
        config_from_dict(TrainConfig, {**BASE, "learning_rat": 1e-5, "zzz": 1})
    msg = str(e.value)
    assert "Unknown TrainConfig option(s): learning_rat, zzz." in msg
    assert "Valid options:" in msg and "learning_rate" in msg


def test_dict_round_trip():
    c = train_config(with_prior_preservation=True, class_prompt="a photo of dog", seed=3, snr_gamma=5.0)
    assert config_from_dict(TrainConfig, config_to_dict(c)) == c


def test_load_config_file_toml_and_json(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text('instance_prompt = "a photo of sks dog"\nresolution = 256\ncenter_crop = true\n'
                    'validation_images = ["a.png"]\n')
    assert load_config_file(toml) == {"instance_prompt": "a photo of sks dog", "resolution": 256,
                                      "center_crop": True, "validation_images": ["a.png"]}
    js = tmp_path / "job.json"
    js.write_text(json.dumps({"resolution": 128}))
    assert load_config_file(js) == {"resolution": 128}


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config_file(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("resolution = = 3\n")
    with pytest.raises(ConfigError, match="Cannot parse"):
        load_config_file(bad)


def test_job_file_round_trip(tmp_path):
    c = train_config(seed=1)
    path = save_job_file(tmp_path / "job.json", "train", c)
    assert load_job_file(path) == ("train", c)
    # a saved job file can also be passed as a config file: its config is unwrapped
    assert load_config_file(path)["seed"] == 1
    (tmp_path / "bad.json").write_text(json.dumps({"job": "paint", "config": {}}))
    with pytest.raises(ConfigError, match="unknown job 'paint'"):
        load_job_file(tmp_path / "bad.json")


def test_generate_and_class_image_configs_validate():
    with pytest.raises(ConfigError) as e:
        GenerateConfig(width=100, scheduler="Heun")
    msg = str(e.value)
    assert "--model is required" in msg and "--prompt is required" in msg
    assert "--width must be a positive multiple of 8" in msg and "--scheduler must be one of" in msg
    with pytest.raises(ConfigError) as e:
        ClassImagesConfig(num_class_images=-1)
    msg = str(e.value)
    assert "--pretrained_model_name_or_path is required" in msg and "--class_prompt is required" in msg
    assert "--class_data_dir is required" in msg and "--num_class_images must be >= 0" in msg


@pytest.mark.parametrize("key, value", [("resolution", "512"), ("learning_rate", "1e-5"), ("center_crop", "false")])
def test_values_of_the_wrong_type_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"--{key}"):
        config_from_dict(TrainConfig, {**BASE, key: value})
