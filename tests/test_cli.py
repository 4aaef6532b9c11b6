"""`dreambooth train` parses diffusers' command lines, config files, and reports errors."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sksbooth.cli import build_parser, config_from_args
from sksbooth.config import TrainConfig
from sksbooth.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# Every flag of diffusers' examples/dreambooth/train_dreambooth.py, with a value of the type
# diffusers gives it (None: a store_true switch) and the value it must parse into.
DIFFUSERS_FLAGS = {
    "pretrained_model_name_or_path": ("models/tiny", "models/tiny"),
    "revision": ("main", "main"),
    "variant": ("fp16", "fp16"),
    "tokenizer_name": ("my-tokenizer", "my-tokenizer"),
    "instance_data_dir": ("photos", "photos"),
    "class_data_dir": ("class-photos", "class-photos"),
    "instance_prompt": ("a photo of sks dog", "a photo of sks dog"),
    "class_prompt": ("a photo of dog", "a photo of dog"),
    "with_prior_preservation": (None, True),
    "prior_loss_weight": ("0.5", 0.5),
    "num_class_images": ("50", 50),
    "output_dir": ("out", "out"),
    "seed": ("42", 42),
    "resolution": ("256", 256),
    "center_crop": (None, True),
    "train_text_encoder": (None, True),
    "train_batch_size": ("2", 2),
    "sample_batch_size": ("3", 3),
    "num_train_epochs": ("5", 5),
    "max_train_steps": ("400", 400),
    "checkpointing_steps": ("100", 100),
    "checkpoints_total_limit": ("2", 2),
    "resume_from_checkpoint": ("latest", "latest"),
    "gradient_accumulation_steps": ("2", 2),
    "gradient_checkpointing": (None, True),
    "learning_rate": ("2e-6", 2e-6),
    "scale_lr": (None, True),
    "lr_scheduler": ("cosine", "cosine"),
    "lr_warmup_steps": ("10", 10),
    "lr_num_cycles": ("3", 3),
    "lr_power": ("2.0", 2.0),
    "use_8bit_adam": (None, True),
    "dataloader_num_workers": ("1", 1),
    "adam_beta1": ("0.8", 0.8),
    "adam_beta2": ("0.99", 0.99),
    "adam_weight_decay": ("0.001", 0.001),
    "adam_epsilon": ("1e-7", 1e-7),
    "max_grad_norm": ("0.5", 0.5),
    "push_to_hub": (None, True),
    "hub_token": ("hf_xxx", "hf_xxx"),
    "hub_model_id": ("me/sks-dog", "me/sks-dog"),
    "logging_dir": ("tb", "tb"),
    "allow_tf32": (None, True),
    "report_to": ("tensorboard", "tensorboard"),
    "validation_prompt": ("a photo of sks dog on a beach", "a photo of sks dog on a beach"),
    "num_validation_images": ("2", 2),
    "validation_steps": ("50", 50),
    "mixed_precision": ("fp16", "fp16"),
    "prior_generation_precision": ("fp16", "fp16"),
    "local_rank": ("0", 0),
    "enable_xformers_memory_efficient_attention": (None, True),
    "set_grads_to_none": (None, True),
    "offset_noise": (None, True),
    "snr_gamma": ("5.0", 5.0),
    "pre_compute_text_embeddings": (None, True),
    "tokenizer_max_length": ("77", 77),
    "text_encoder_use_attention_mask": (None, True),
    "skip_save_text_encoder": (None, True),
    "validation_images": (["a.png", "b.png"], ["a.png", "b.png"]),
    "class_labels_conditioning": ("timesteps", "timesteps"),
    "validation_scheduler": ("DDPMScheduler", "DDPMScheduler"),
}
assert len(DIFFUSERS_FLAGS) == 61

UNSUPPORTED = {"push_to_hub", "hub_token", "hub_model_id", "validation_images", "class_labels_conditioning"}


def command_line(flags) -> list[str]:
    argv = ["train"]
    for name in flags:
        value = DIFFUSERS_FLAGS[name][0]
        argv.append(f"--{name}")
        if isinstance(value, list):
            argv.extend(value)
        elif value is not None:
            argv.append(value)
    return argv


def parse(argv):
    return build_parser().parse_args(argv)


def test_every_diffusers_flag_is_accepted_with_its_name():
    args = parse(command_line(DIFFUSERS_FLAGS))
    parsed = vars(args)
    for name, (_, expected) in DIFFUSERS_FLAGS.items():
        # the exact name exists (argparse would otherwise fill a different dest by abbreviation)
        assert name in parsed, f"--{name} is not a flag of `dreambooth train`"
        assert parsed[name] == expected and type(parsed[name]) is type(expected), name


def test_each_flag_maps_onto_the_train_config_field():
    names = [n for n in DIFFUSERS_FLAGS if n not in UNSUPPORTED and n != "pre_compute_text_embeddings"]
    config = config_from_args(TrainConfig, parse(command_line(names)))
    for name in names:
        assert getattr(config, name) == DIFFUSERS_FLAGS[name][1], name
    # pre_compute_text_embeddings is a flag too (it conflicts with train_text_encoder)
    names.remove("train_text_encoder")
    config = config_from_args(TrainConfig, parse(command_line(names + ["pre_compute_text_embeddings"])))
    assert config.pre_compute_text_embeddings is True and config.train_text_encoder is False


def test_unsupported_flags_parse_but_fail_validation_each_with_its_reason():
    args = parse(command_line(DIFFUSERS_FLAGS))
    with pytest.raises(ConfigError) as e:
        config_from_args(TrainConfig, args)
    msg = str(e.value)
    for name in UNSUPPORTED:
        assert f"--{name}:" in msg
    assert "--train_text_encoder cannot be used with --pre_compute_text_embeddings" in msg


def test_typical_diffusers_command_line():
    # from diffusers' examples/dreambooth/README.md, with prior preservation
    line = """train --pretrained_model_name_or_path=models/sd15 --instance_data_dir=dog
      --class_data_dir=path-to-class-images --output_dir=path-to-save-model
      --with_prior_preservation --prior_loss_weight=1.0
      --instance_prompt="a photo of sks dog" --class_prompt="a photo of dog"
      --resolution=512 --train_batch_size=1 --gradient_accumulation_steps=2 --gradient_checkpointing
      --use_8bit_adam --learning_rate=5e-6 --lr_scheduler="constant" --lr_warmup_steps=0
      --num_class_images=200 --max_train_steps=800 --mixed_precision=fp16 --train_text_encoder
      --seed=1337 --report_to=wandb --validation_prompt="a photo of sks dog in a bucket"
      --checkpointing_steps=250"""
    c = config_from_args(TrainConfig, parse(shlex.split(line)))
    assert isinstance(c, TrainConfig)
    assert c.pretrained_model_name_or_path == "models/sd15" and c.instance_data_dir == "dog"
    assert c.class_data_dir == "path-to-class-images" and c.output_dir == "path-to-save-model"
    assert c.with_prior_preservation is True and c.prior_loss_weight == 1.0
    assert c.instance_prompt == "a photo of sks dog" and c.class_prompt == "a photo of dog"
    assert c.resolution == 512 and c.train_batch_size == 1 and c.gradient_accumulation_steps == 2
    assert c.gradient_checkpointing and c.use_8bit_adam and c.train_text_encoder
    assert c.learning_rate == 5e-6 and c.lr_scheduler == "constant" and c.lr_warmup_steps == 0
    assert c.num_class_images == 200 and c.max_train_steps == 800 and c.mixed_precision == "fp16"
    assert c.seed == 1337 and c.report_to == "wandb" and c.checkpointing_steps == 250
    assert c.validation_prompts == ["a photo of sks dog in a bucket"]
    # everything not given keeps the dataclass default
    assert c.center_crop is False and c.adam_beta2 == 0.999 and c.num_train_epochs == 1
    assert c.checkpoints_total_limit is None and c.validation_steps == 100


def test_help_lists_every_diffusers_flag(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in DIFFUSERS_FLAGS:
        assert f"--{name}" in out, name


def test_flags_not_given_are_not_in_the_namespace():
    args = parse(["train", "--resolution", "64"])
    assert vars(args) == {"command": "train", "config": None, "resolution": 64}


def test_bad_choice_and_bad_type_are_argparse_errors(capsys):
    with pytest.raises(SystemExit) as e:
        parse(["train", "--lr_scheduler", "cosine_annealing"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        parse(["train", "--resolution", "big"])
    assert e.value.code == 2 and "--resolution" in capsys.readouterr().err


def write_toml(tmp_path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


TOML = '''
pretrained_model_name_or_path = "models/tiny"
instance_data_dir = "photos"
instance_prompt = "a photo of sks dog"
resolution = 256
learning_rate = 1e-5
center_crop = true
with_prior_preservation = true
class_prompt = "a photo of dog"
validation_prompt = "sks dog | sks dog swimming"
'''


def test_config_file(tmp_path):
    path = write_toml(tmp_path, TOML)
    c = config_from_args(TrainConfig, parse(["train", "--config", str(path)]))
    assert c.pretrained_model_name_or_path == "models/tiny" and c.instance_prompt == "a photo of sks dog"
    assert c.resolution == 256 and c.learning_rate == 1e-5 and c.center_crop is True
    assert c.with_prior_preservation and c.class_prompt == "a photo of dog"
    assert c.validation_prompts == ["sks dog", "sks dog swimming"]


def test_command_line_overrides_the_config_file(tmp_path):
    path = write_toml(tmp_path, TOML)
    argv = ["train", "--resolution", "128", "--config", str(path), "--no-center_crop",
            "--instance_prompt", "a photo of zwx cat", "--max_train_steps=3"]
    c = config_from_args(TrainConfig, parse(argv))
    assert c.resolution == 128 and c.center_crop is False and c.instance_prompt == "a photo of zwx cat"
    assert c.max_train_steps == 3
    assert c.learning_rate == 1e-5 and c.class_prompt == "a photo of dog"  # from the file


def test_json_config_file(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"pretrained_model_name_or_path": "m", "instance_data_dir": "d", '
                    '"instance_prompt": "p", "seed": 9}')
    c = config_from_args(TrainConfig, parse(["train", "--config", str(path), "--seed", "10"]))
    assert c.seed == 10 and c.instance_prompt == "p"


def test_unknown_toml_keys_fail_with_a_clear_message(tmp_path):
    path = write_toml(tmp_path, TOML + 'learning_rat = 2e-6\nuse_emma = true\n')
    with pytest.raises(ConfigError) as e:
        config_from_args(TrainConfig, parse(["train", "--config", str(path)]))
    msg = str(e.value)
    assert "Unknown TrainConfig option(s): learning_rat, use_emma." in msg
    assert "Valid options:" in msg and "learning_rate" in msg


def test_unsupported_flag_in_the_config_file_fails(tmp_path):
    path = write_toml(tmp_path, TOML + "push_to_hub = true\n")
    with pytest.raises(ConfigError, match="--push_to_hub: pushing to the Hugging Face Hub is not supported"):
        config_from_args(TrainConfig, parse(["train", "--config", str(path)]))
    # and the command line can switch it off again
    c = config_from_args(TrainConfig, parse(["train", "--config", str(path), "--no-push_to_hub"]))
    assert c.push_to_hub is False


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        config_from_args(TrainConfig, parse(["train", "--config", str(tmp_path / "nope.toml")]))


def run_cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    exe = ROOT / ".venv" / "bin" / "dreambooth"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_dreambooth_train_push_to_hub_exits_2_with_the_message(tmp_path, instance_dir):
    proc = run_cli("train", "--pretrained_model_name_or_path", str(tmp_path / "model"),
                   "--instance_data_dir", str(instance_dir), "--instance_prompt", "a photo of sks dog",
                   "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id", "me/dog",
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--push_to_hub: pushing to the Hugging Face Hub is not supported; upload output_dir yourself." in proc.stderr
    assert "--hub_model_id: pushing to the Hugging Face Hub is not supported." in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing started
