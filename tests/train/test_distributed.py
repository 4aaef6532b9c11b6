"""Scale-out goes through accelerate: two CPU processes (DDP over gloo) train in lockstep."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_cpu_ddp(num_processes: int) -> list[str]:
    # `accelerate launch --cpu --num_processes 2` starts a single process (accelerate issue #2741);
    # its multi-process launcher with ACCELERATE_USE_CPU=1 gives real DDP on CPU.
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


def test_two_processes_both_train_and_end_with_identical_weights(tiny_model, instance_dir, tmp_path):
    out = tmp_path / "out"
    train_args = ["-m", "sksbooth.cli", "train", "--pretrained_model_name_or_path", str(tiny_model),
                  "--instance_data_dir", str(instance_dir), "--instance_prompt", "a photo of sks dog",
                  "--with_prior_preservation", "--class_prompt", "a photo of dog", "--num_class_images", "2",
                  "--resolution", "64", "--train_batch_size", "1", "--max_train_steps", "6",
                  "--checkpointing_steps", "6", "--learning_rate", "1e-3", "--lr_warmup_steps", "0",
                  "--seed", "1", "--output_dir", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(accelerate_cpu_ddp(2) + train_args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # each rank gets half of the 3 images per epoch, and still all 6 steps are run
    checkpoint = out / "checkpoint-6"
    ranks = [torch.load(checkpoint / f"trainer_state_{r}.pt", weights_only=False) for r in (0, 1)]
    assert [s["global_step"] for s in ranks] == [6, 6]
    assert proc.stdout.count("Model:") == 1  # one report, from the main process
    # each rank drew its own noise (it trained on its own share), yet the weights agree exactly
    assert not torch.equal(ranks[0]["noise_rng"], ranks[1]["noise_rng"])
    assert ranks[0]["weights_fingerprint"] == ranks[1]["weights_fingerprint"]
    assert (checkpoint / "random_states_1.pkl").is_file()
    assert (out / "model" / "model_index.json").is_file()


def test_accelerate_cpu_flag_that_starts_one_process_is_refused_with_the_working_command(tiny_model, instance_dir, tmp_path):
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--cpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    args = ["-m", "sksbooth.cli", "train", "--pretrained_model_name_or_path", str(tiny_model), "--instance_data_dir",
            str(instance_dir), "--instance_prompt", "a photo of sks dog", "--output_dir", str(tmp_path / "o")]
    proc = subprocess.run(launcher + args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu" in proc.stderr
    assert not (tmp_path / "o" / "model").exists()
