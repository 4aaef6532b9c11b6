"""The DreamBooth training loop (Ruiz et al., 2022, arXiv 2208.12242)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from ..config import ClassImagesConfig, TrainConfig, config_to_dict
from ..data.dataset import DreamBoothDataset
from ..data.images import scan_image_folder
from ..errors import NonFiniteLossError
from ..events import Callback, StopFlag, emit
from ..fsutil import atomic_write_text
from ..models.load import load_components
from .checkpoint import CONFIG_NAME, load_checkpoint, resolve_resume, save_checkpoint
from .losses import compute_snr, diffusion_target, dreambooth_loss, min_snr_weights, sample_noise
from .report import append_jsonl, read_jsonl, write_loss_plot
from .sampling import write_sample_grid
from .setup import (WEIGHT_DTYPES, check_optional_features, make_accelerator, make_dataloader,
                    make_lr_scheduler, make_optimizer, prepare_models, schedule_lengths, trainable_parameters)
from .text import PromptEncoder
from .save import save_final_model

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
    out = Path(config.output_dir)
    accelerator = make_accelerator(config)
    seed = config.seed if config.seed is not None else 0
    torch.manual_seed(seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG_NAME, json.dumps(config_to_dict(config), indent=2))
    resume_from = resolve_resume(out, config.resume_from_checkpoint)

    instance = scan_image_folder(config.instance_data_dir, "instance")
    class_folder = ensure_class_images(config, accelerator, callbacks, stop)
    dataset = DreamBoothDataset(instance, config.instance_prompt, config.resolution, config.center_crop,
                                config.random_flip, class_folder, config.class_prompt, seed)
    if instance.skipped:
        emit(callbacks, "log", message=f"Skipped unreadable images: {instance.skipped}")

    weight_dtype = WEIGHT_DTYPES.get(accelerator.mixed_precision, torch.float32)
    parts = load_components(config.pretrained_model_name_or_path, config.revision, config.variant, config.tokenizer_name)
    trained = prepare_models(parts, config, weight_dtype, accelerator.device)
    prompts = PromptEncoder(parts.tokenizer, parts.text_encoder, config.train_text_encoder,
                            config.tokenizer_max_length, config.text_encoder_use_attention_mask)
    if config.pre_compute_text_embeddings:
        prompts.precompute(dataset.instance_captions + [config.class_prompt or ""], accelerator.device)

    loader, sampler = make_dataloader(dataset, config, seed)
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = make_optimizer(trainable_parameters(trained), config, lr)
    updates_per_epoch, max_steps, epochs = schedule_lengths(config, len(loader))
    lr_scheduler = make_lr_scheduler(optimizer, config, max_steps, accelerator.num_processes)
    *trained, optimizer, loader, lr_scheduler = accelerator.prepare(*trained, optimizer, loader, lr_scheduler)
    unet, text_encoder = trained[0], (trained[1] if config.train_text_encoder else parts.text_encoder)
    prompts.text_encoder = text_encoder
    noise_rng = torch.Generator().manual_seed(seed * 7919 + accelerator.process_index)

    global_step, history_path = 0, out / "loss_history.jsonl"
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        global_step = state["global_step"]
        noise_rng.set_state(state["noise_rng"])
        emit(callbacks, "log", message=f"Resumed from {resume_from} at step {global_step}")
    if accelerator.is_main_process:  # drop loss records past the resume point
        history = [h for h in read_jsonl(history_path) if h["step"] <= global_step]
        atomic_write_text(history_path, "".join(json.dumps(h) + "\n" for h in history))

    def checkpoint(step: int) -> Path:
        state = {"global_step": step, "noise_rng": noise_rng.get_state(), "weights_fingerprint": fingerprint(trained)}
        path = save_checkpoint(accelerator, out, step, state, config, config.checkpoints_total_limit)
        if accelerator.is_main_process:
            write_loss_plot(read_jsonl(history_path), out / "loss.png")
        emit(callbacks, "checkpoint", step, max_steps, path=str(path))
        return path

    last_checkpoint = resume_from
    emit(callbacks, "start", global_step, max_steps, job="train", output_dir=str(out))
    unet.train()
    for epoch in range(global_step // updates_per_epoch, epochs):
        sampler.use_epoch(epoch)
        dataset.epoch = epoch
        done_in_epoch = (global_step - epoch * updates_per_epoch) * config.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(loader, done_in_epoch) if done_in_epoch > 0 else loader
        for batch in batches:
            with accelerator.accumulate(*trained):
                loss, instance_loss, prior_loss = training_step(batch, parts, unet, prompts, config, noise_rng,
                                                                weight_dtype, accelerator.device)
                # A non-finite loss would poison the weights; stop before the optimizer sees it.
                if not torch.isfinite(accelerator.gather(loss.detach())).all():
                    raise NonFiniteLossError(
                        f"The loss became {loss.item()} at step {global_step + 1}. Lower --learning_rate, use bf16 or "
                        f"fp32 instead of fp16, or check your images. Last good checkpoint: {last_checkpoint or 'none'}.")
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable_parameters(trained), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=config.set_grads_to_none)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            record = {"loss": loss.item(), "instance_loss": instance_loss.item(),
                      "prior_loss": prior_loss.item(), "lr": lr_scheduler.get_last_lr()[0]}
            if accelerator.is_main_process:
                append_jsonl(history_path, {"step": global_step, **record})
            emit(callbacks, "step", global_step, max_steps, **record)
            if global_step % config.validation_steps == 0 and config.validation_prompts and accelerator.is_main_process:
                grid = write_sample_grid(parts, accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder),
                                         config, global_step, out / "samples", weight_dtype)
                emit(callbacks, "sample", global_step, max_steps, path=str(grid))
            stopping = any_rank(accelerator, stop.is_set()) and global_step < max_steps
            if global_step % config.checkpointing_steps == 0 or stopping:
                last_checkpoint = checkpoint(global_step)
            if stopping:
                emit(callbacks, "stopped", global_step, max_steps, reason=stop.reason, checkpoint=str(last_checkpoint))
                return TrainResult(out, None, global_step, True, last_checkpoint)
            if global_step >= max_steps:
                break

    accelerator.wait_for_everyone()
    model_path = None
    if accelerator.is_main_process:
        model_path = save_final_model(parts, accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder),
                                      config, out)
        write_loss_plot(read_jsonl(history_path), out / "loss.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    emit(callbacks, "done", global_step, max_steps, model=str(model_path), loss_plot=str(out / "loss.png"))
    return TrainResult(out, model_path, global_step, False, last_checkpoint)


def training_step(batch, parts, unet, prompts, config, noise_rng, weight_dtype, device):
    """One forward pass over [instance..., class...] images; returns (loss, instance part, prior part)."""
    scheduler = parts.noise_scheduler
    with torch.no_grad():
        pixels = batch["pixel_values"].to(device, dtype=weight_dtype)
        latents = parts.vae.encode(pixels).latent_dist.sample(generator=noise_rng) * parts.vae.config.scaling_factor
    noise = sample_noise(latents, noise_rng, OFFSET_NOISE if config.offset_noise else 0.0)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=noise_rng)
    timesteps = timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    hidden = prompts(batch["prompts"], device)
    pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
    target = diffusion_target(scheduler, latents, noise, timesteps)
    weights = None
    if config.snr_gamma is not None:
        weights = min_snr_weights(compute_snr(scheduler, timesteps), config.snr_gamma, scheduler.config.prediction_type)
    return dreambooth_loss(pred, target, batch["num_instance"], config.prior_loss_weight, weights)


def any_rank(accelerator, flag: bool) -> bool:
    """True if any process has the flag: all ranks must stop at the same step, or DDP deadlocks."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "max").item())


def fingerprint(modules) -> float:
    """A position-sensitive checksum of the trained weights; lets DDP ranks be compared for sync."""
    total, i = 0.0, 0
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                i += 1
                total += float(p.detach().double().sum()) * i
    return total


def ensure_class_images(config: TrainConfig, accelerator, callbacks, stop):
    """With prior preservation, top up the class folder (main process), then scan it everywhere."""
    if not config.with_prior_preservation:
        return None
    if accelerator.is_main_process:
        from ..class_images import generate_class_images
        generate_class_images(ClassImagesConfig(
            pretrained_model_name_or_path=config.pretrained_model_name_or_path, class_prompt=config.class_prompt,
            class_data_dir=config.resolved_class_data_dir, num_class_images=config.num_class_images,
            sample_batch_size=config.sample_batch_size, seed=config.seed or 0, resolution=config.resolution,
            prior_generation_precision=config.prior_generation_precision, variant=config.variant),
            callbacks, stop)
    accelerator.wait_for_everyone()
    return scan_image_folder(config.resolved_class_data_dir, "class")
