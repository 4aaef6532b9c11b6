"""Ctrl-C mid-run saves a resumable checkpoint; LoRA and text-encoder training produce usable models."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from sksbooth.config import GenerateConfig, TrainConfig
from sksbooth.generate import generate
from sksbooth.train.loop import train


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_ctrl_c_saves_a_resumable_checkpoint_and_writes_no_model(tiny_model, instance_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "dreambooth"), "train", "--pretrained_model_name_or_path", str(tiny_model),
           "--instance_data_dir", str(instance_dir), "--instance_prompt", "a photo of sks dog", "--resolution", "64",
           "--train_batch_size", "1", "--max_train_steps", "500", "--checkpointing_steps", "1000",
           "--output_dir", str(out), "--seed", "0"]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while lines(out / "loss_history.jsonl") < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr[-3000:]
    assert "--resume_from_checkpoint latest" in stdout
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and int(checkpoints[0].name.split("-")[1]) >= 2
    assert not (out / "model").exists()
    assert not list(out.glob(".checkpoint-*"))  # no half-written checkpoint left behind


def small_config(tiny_model, instance_dir, out, **kw) -> TrainConfig:
    return TrainConfig(pretrained_model_name_or_path=str(tiny_model), instance_data_dir=str(instance_dir),
                       instance_prompt="a photo of sks dog", output_dir=str(out), resolution=64, train_batch_size=1,
                       max_train_steps=8, learning_rate=1e-2, lr_warmup_steps=0, checkpointing_steps=1000, seed=0, **kw)


def draw(model, out: Path) -> torch.Tensor:
    cfg = GenerateConfig(model=str(model), prompt="a photo of sks dog", num_images=1, num_inference_steps=3,
                         output_dir=str(out), scheduler="DDIM")
    from PIL import Image
    import numpy as np
    return torch.from_numpy(np.asarray(Image.open(generate(cfg)[0]), dtype=np.float32))


def test_lora_training_writes_weights_that_generate_loads_on_the_base(tiny_model, instance_dir, tmp_path):
    result = train(small_config(tiny_model, instance_dir, tmp_path / "lora", use_lora=True, rank=4,
                                train_text_encoder=True))
    assert result.model_path == tmp_path / "lora" / "lora.safetensors"  # kohya format, named after the folder
    weights = load_file(result.model_path)
    assert any(k.startswith("lora_unet_") for k in weights) and any(k.startswith("lora_te_") for k in weights)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in weights)
    from sksbooth.models.lora_files import read_metadata
    meta = read_metadata(result.model_path)
    assert (meta["ss_steps"], meta["ss_network_dim"], meta["ss_network_alpha"]) == ("8", "4", "4")
    with_lora, base = draw(tmp_path / "lora", tmp_path / "g1"), draw(tiny_model, tmp_path / "g2")
    assert (with_lora - base).abs().mean() > 0.5  # the adapters change what is drawn


def test_text_encoder_training_changes_the_saved_text_encoder(tiny_model, instance_dir, tmp_path):
    result = train(small_config(tiny_model, instance_dir, tmp_path / "te", train_text_encoder=True))
    from transformers import CLIPTextModel
    tuned = CLIPTextModel.from_pretrained(result.model_path / "text_encoder").state_dict()
    base = CLIPTextModel.from_pretrained(Path(tiny_model) / "text_encoder").state_dict()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert len(changed) > len(base) // 2
