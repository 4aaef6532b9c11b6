"""The DreamBooth training loop (Ruiz et al., 2022, arXiv 2208.12242)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..config import TrainConfig
from ..errors import NonFiniteLossError, OutOfMemory
from ..events import Callback, StopFlag, emit
from .latents import latents_for_step
from .losses import compute_snr, diffusion_target, dreambooth_loss, min_snr_weights, sample_noise
from .report import append_jsonl
from .session import Session, build_session
from .setup import check_optional_features, make_accelerator

OFFSET_NOISE = 0.1  # diffusers' --offset_noise strength


@dataclass
class TrainResult:
    output_dir: Path
    model_path: Optional[Path]  # None when stopped before the end
    global_step: int
    stopped: bool
    last_checkpoint: Optional[Path]


def train(config: TrainConfig, callbacks: Iterable[Callback] = (), stop: Optional[StopFlag] = None) -> TrainResult:
    """Fine-tune a Stable Diffusion model on a subject; returns where everything went.

    Events: start, step, sample, checkpoint, done (and stopped). A set stop flag
    (cancel button, Ctrl-C, stop file) saves a resumable checkpoint and returns.
    """
    callbacks, stop = list(callbacks), stop or StopFlag(config.stop_file)
    check_optional_features(config)
    accelerator = make_accelerator(config)
    if not accelerator.is_main_process:  # one report per run, not one per process
        callbacks = []
    s = build_session(config, accelerator, callbacks, stop)
    emit(callbacks, "start", s.global_step, s.max_steps, job="train", output_dir=str(s.out))
    s.unet.train()
    for epoch in range(s.global_step // s.updates_per_epoch, s.epochs):
        # Order and crops depend on the epoch only, so a resumed run skips into the same sequence.
        s.sampler.use_epoch(epoch)
        s.dataset.epoch = epoch
        done_in_epoch = (s.global_step - epoch * s.updates_per_epoch) * config.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(s.loader, done_in_epoch) if done_in_epoch > 0 else s.loader
        for batch in batches:
            with accelerator.accumulate(*s.trained), out_of_memory_advice(s):
                losses = training_step(batch, s, config)
                check_finite(losses[0], s)
                accelerator.backward(losses[0])
                if accelerator.sync_gradients and config.max_grad_norm > 0 and not config.fused_backward_pass:
                    accelerator.clip_grad_norm_(s.trainable_parameters(), config.max_grad_norm)
                s.optimizer.step()
                s.lr_scheduler.step()
                s.optimizer.zero_grad(set_to_none=config.set_grads_to_none)
            if not accelerator.sync_gradients:
                continue  # mid-accumulation: not an optimizer step yet
            s.global_step += 1
            if s.ema:
                s.ema.step(s.unet)
            record = {"loss": losses[0].item(), "instance_loss": losses[1].item(), "prior_loss": losses[2].item(),
                      "lr": s.lr_scheduler.get_last_lr()[0]}
            if accelerator.is_main_process:
                append_jsonl(s.history_path, {"step": s.global_step, **record})
            accelerator.log(record, step=s.global_step)
            emit(callbacks, "step", s.global_step, s.max_steps, **record)
            if s.global_step % config.validation_steps == 0 and config.validation_prompts and accelerator.is_main_process:
                s.sample(callbacks)
            stopping = any_rank(accelerator, stop.is_set()) and s.global_step < s.max_steps
            if s.global_step % config.checkpointing_steps == 0 or stopping:
                s.checkpoint(callbacks)
            if stopping:
                emit(callbacks, "stopped", s.global_step, s.max_steps, reason=stop.reason,
                     checkpoint=str(s.last_checkpoint))
                return TrainResult(s.out, None, s.global_step, True, s.last_checkpoint)
            if s.global_step >= s.max_steps:
                break
    # Saving needs the weights only: free the gradients and optimizer state first (for a full
    # fine-tune three times the UNet's size), or the save's buffers come on top of them.
    s.optimizer.zero_grad(set_to_none=True)
    s.optimizer.state.clear()
    model_path = s.save_final()
    accelerator.end_training()
    emit(callbacks, "done", s.global_step, s.max_steps, model=str(model_path), loss_plot=str(s.out / "loss.png"))
    return TrainResult(s.out, model_path, s.global_step, False, s.last_checkpoint)


def training_step(batch, s: Session, config: TrainConfig):
    """One forward pass over [instance..., class...] images; returns (loss, instance part, prior part)."""
    scheduler, device = s.parts.noise_scheduler, s.accelerator.device
    latents = latents_for_step(batch, s.parts.vae, device, s.weight_dtype, s.noise_rng)  # cached or encoded
    noise = sample_noise(latents, s.noise_rng, OFFSET_NOISE if config.offset_noise else 0.0)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=s.noise_rng)
    timesteps = timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = s.unet(noisy, timesteps, **s.prompts.unet_inputs(batch, device), return_dict=False)[0]
    target = diffusion_target(scheduler, latents, noise, timesteps)
    weights = None
    if config.snr_gamma is not None:
        weights = min_snr_weights(compute_snr(scheduler, timesteps), config.snr_gamma, scheduler.config.prediction_type)
    return dreambooth_loss(pred, target, batch["num_instance"], config.prior_loss_weight, weights)


def check_finite(loss: torch.Tensor, s: Session) -> None:
    """A non-finite loss would poison the weights: stop before the optimizer sees it."""
    if not torch.isfinite(s.accelerator.gather(loss.detach())).all():
        raise NonFiniteLossError(
            f"The loss became {loss.item()} at step {s.global_step + 1}. Lower --learning_rate, use bf16 or fp32 "
            f"instead of fp16, or check your images. Last good checkpoint: {s.last_checkpoint or 'none'}.")


@contextlib.contextmanager
def out_of_memory_advice(s: Session):
    """Turn an allocator failure into what to change; the last checkpoint is untouched."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as e:
        c = s.config
        raise OutOfMemory(
            f"Out of memory at step {s.global_step + 1} (resolution {c.resolution}, batch {c.train_batch_size}"
            f"{' + class images' if c.with_prior_preservation else ''}). To fit, try in this order: "
            "--gradient_checkpointing, --mixed_precision bf16 (or fp16), --use_8bit_adam, --use_lora, "
            "--train_batch_size 1 with --gradient_accumulation_steps, a lower --resolution. "
            f"Last checkpoint: {s.last_checkpoint or 'none'} (resume with --resume_from_checkpoint latest).") from e


def any_rank(accelerator, flag: bool) -> bool:
    """True if any process has the flag: all ranks must stop at the same step, or DDP deadlocks."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "max").item())
