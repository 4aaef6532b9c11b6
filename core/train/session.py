"""Everything one training run holds, built once before the loop starts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ClassImagesConfig, TrainConfig, config_to_dict
from ..data.buckets import assign_buckets, make_bucket_dataloader
from ..data.dataset import DreamBoothDataset
from ..data.images import scan_image_folder
from ..events import emit
from ..fsutil import atomic_write_text
from ..models.load import SDComponents, load_components
from ..cpu_precision import slow_bf16_warning
from ..plan import budget_warning, plan_for_components
from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint, write_run_config
from .report import read_jsonl, write_loss_plot
from .sampling import write_sample_grid
from .latents import cache_latents
from .memory import CpuEMA, offload, on_device
from .save import save_final_model
from .setup import (WEIGHT_DTYPES, EpochShuffleSampler, choose_attention, end_text_group_at, make_dataloader,
                    make_lr_scheduler, make_optimizer, parameter_groups, prepare_models, schedule_lengths,
                    trainable_parameters)
from .fused import check_fused_backward, fuse_optimizer_into_backward
from .text import PromptEncoder


@dataclass
class Session:
    config: TrainConfig
    accelerator: Any
    out: Path
    parts: SDComponents
    trained: list  # the prepared modules being trained: [unet], [unet, text_encoder(s)]
    prompts: PromptEncoder
    dataset: DreamBoothDataset
    loader: Any
    sampler: EpochShuffleSampler  # or data.buckets.BucketBatchSampler: both order batches by (seed, epoch)
    optimizer: Any
    lr_scheduler: Any
    noise_rng: torch.Generator
    weight_dtype: torch.dtype
    max_steps: int
    updates_per_epoch: int
    epochs: int
    global_step: int = 0
    last_checkpoint: Optional[Path] = None
    ema: Optional[CpuEMA] = None  # --use_ema: UNet weights averaged in CPU memory

    @property
    def unet(self):
        return self.trained[0]

    @property
    def text_encoder(self):
        return self.trained[1] if self.config.trains_text_encoder else self.parts.text_encoder

    @property
    def text_encoder_2(self):  # SDXL's second text encoder; None for SD 1.x/2.x
        if self.parts.text_encoder_2 is None:
            return None
        return self.trained[2] if self.config.trains_text_encoder else self.parts.text_encoder_2

    @property
    def history_path(self) -> Path:
        return self.out / "loss_history.jsonl"

    def trainable_parameters(self):
        return trainable_parameters(self.trained)

    def checkpoint(self, callbacks) -> Path:
        state = {"global_step": self.global_step, "noise_rng": self.noise_rng.get_state(),
                 "weights_fingerprint": fingerprint(self.trained),
                 "ema": self.ema.state_dict() if self.ema else None}
        self.last_checkpoint = save_checkpoint(self.accelerator, self.out, self.global_step, state, self.config,
                                               self.config.checkpoints_total_limit)
        if self.accelerator.is_main_process:
            write_loss_plot(read_jsonl(self.history_path), self.out / "loss.png")
        emit(callbacks, "checkpoint", self.global_step, self.max_steps, path=str(self.last_checkpoint))
        if self.config.checkpoint_metric and self.accelerator.is_main_process:
            from ..evaluate.checkpoints import score_checkpoint
            score_checkpoint(self, callbacks)
        return self.last_checkpoint

    def sample(self, callbacks) -> None:
        unwrap = self.accelerator.unwrap_model
        encoders = [unwrap(m) for m in (self.text_encoder, self.text_encoder_2) if m is not None]
        with on_device([self.parts.vae, *encoders], self.accelerator.device):  # if offloaded
            grid = write_sample_grid(self.parts, unwrap(self.unet), *encoders, config=self.config,
                                     step=self.global_step, out_dir=self.out / "samples", dtype=self.weight_dtype)
        emit(callbacks, "sample", self.global_step, self.max_steps, path=str(grid))

    def save_final(self) -> Optional[Path]:
        self.accelerator.wait_for_everyone()
        path = None
        if self.accelerator.is_main_process:
            unwrap = self.accelerator.unwrap_model
            if self.ema:
                self.ema.copy_to(unwrap(self.unet))  # the saved model is the average
            path = save_final_model(self.parts, unwrap(self.unet), unwrap(self.text_encoder), self.config, self.out,
                                    steps=self.global_step,
                                    text_encoder_2=unwrap(self.text_encoder_2) if self.text_encoder_2 else None)
            write_loss_plot(read_jsonl(self.history_path), self.out / "loss.png")
        self.accelerator.wait_for_everyone()
        return path


def build_session(config: TrainConfig, accelerator, callbacks, stop) -> Session:
    """Data, models, optimizer and schedule, prepared by accelerate and resumed if asked."""
    out, seed = Path(config.output_dir), (config.seed if config.seed is not None else 0)
    config = choose_attention(config, accelerator.device)  # recorded in the saved config
    emit(callbacks, "log", message=f"Attention backend: {config.attention}")
    slow_bf16 = slow_bf16_warning(accelerator.device, accelerator.mixed_precision)
    if slow_bf16:
        emit(callbacks, "log", message=slow_bf16)
    torch.manual_seed(seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, config)
    resume_from = resolve_resume(out, config.resume_from_checkpoint)
    if accelerator.log_with:  # --report_to: tensorboard, wandb, ... (accelerate raises if not installed)
        accelerator.init_trackers("dreambooth", config={k: v for k, v in config_to_dict(config).items()
                                                        if isinstance(v, (int, float, str, bool))})

    instance = scan_image_folder(config.instance_data_dir, "instance")
    if instance.skipped:
        emit(callbacks, "log", message=f"Skipped unreadable images: {instance.skipped}")
    sizes = (assign_buckets(instance.images, config.resolution, config.bucket_reso_steps)
             if config.aspect_ratio_bucketing else None)
    dataset = DreamBoothDataset(instance, config.instance_prompt, config.resolution, config.center_crop,
                                config.random_flip, ensure_class_images(config, accelerator, callbacks, stop),
                                config.class_prompt, seed, sizes, config.caption_dropout_rate)

    weight_dtype = WEIGHT_DTYPES.get(accelerator.mixed_precision, torch.float32)
    parts = load_components(config.pretrained_model_name_or_path, config.revision, config.variant, config.tokenizer_name,
                            allow_pickle=config.allow_pickle_checkpoints, dtypes=load_dtypes(config, weight_dtype))
    trained = prepare_models(parts, config, weight_dtype, accelerator.device)
    if config.cache_latents:  # deterministic, draws no random numbers; frees the VAE from the device
        cache_latents(dataset, parts.vae, accelerator.device, weight_dtype, callbacks)
    # predicted peak memory, from the configs on the meta device (on CPU: the whole process's RAM)
    plan = plan_for_components(dataclasses.replace(config, mixed_precision=accelerator.mixed_precision), parts,
                               device=accelerator.device.type)
    if plan is not None and accelerator.is_main_process:
        emit(callbacks, "log", message=plan.format())
        warning = budget_warning(plan, config.memory_budget, accelerator.device)
        if warning:
            emit(callbacks, "log", message=warning)
    make_loader = make_bucket_dataloader if config.aspect_ratio_bucketing else make_dataloader
    loader, sampler = make_loader(dataset, config, seed)
    scale = (config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
             if config.scale_lr else 1)
    lr, text_lr = config.learning_rate * scale, (config.text_encoder_lr or config.learning_rate) * scale
    optimizer = make_optimizer(parameter_groups(trained, config, lr, text_lr), config, lr)
    updates_per_epoch, max_steps, epochs = schedule_lengths(config, len(loader))
    lr_scheduler = make_lr_scheduler(optimizer, config, max_steps, accelerator.num_processes)
    if config.train_text_encoder_ti and len(optimizer.param_groups) > 1:
        end_text_group_at(lr_scheduler, round(config.train_text_encoder_ti_frac * max_steps) * accelerator.num_processes)
    *trained, optimizer, loader, lr_scheduler = accelerator.prepare(*trained, optimizer, loader, lr_scheduler)
    if config.fused_backward_pass:  # the optimizer steps inside backward; see train/fused.py
        check_fused_backward(accelerator)
        fuse_optimizer_into_backward(optimizer, trainable_parameters(trained))
    # prepare() shards the loader across processes: count epochs from the shard, as diffusers does
    updates_per_epoch, max_steps, epochs = schedule_lengths(config, len(loader))

    encoders = trained[1:] if config.trains_text_encoder else [parts.text_encoder, parts.text_encoder_2]
    prompts = PromptEncoder(parts.tokenizer, encoders[0], config.trains_text_encoder, config.tokenizer_max_length,
                            config.text_encoder_use_attention_mask, parts.tokenizer_2,
                            encoders[1] if parts.is_sdxl else None)
    if config.pre_compute_text_embeddings:
        prompts.precompute(dataset.instance_captions + dataset.class_captions + [""], accelerator.device)
        for encoder in (parts.text_encoder, parts.text_encoder_2):
            if encoder is not None:
                offload(encoder)
    session = Session(config, accelerator, out, parts, trained, prompts, dataset, loader, sampler, optimizer,
                      lr_scheduler, torch.Generator().manual_seed(seed * 7919 + accelerator.process_index),
                      weight_dtype, max_steps, updates_per_epoch, epochs,
                      ema=CpuEMA(accelerator.unwrap_model(trained[0]), config.ema_decay) if config.use_ema else None)
    if resume_from is not None:
        resume(session, resume_from, callbacks)
    if accelerator.is_main_process:  # drop loss records past the resume point
        history = [h for h in read_jsonl(session.history_path) if h["step"] <= session.global_step]
        atomic_write_text(session.history_path, "".join(json.dumps(h) + "\n" for h in history))
    return session


def load_dtypes(config: TrainConfig, weight_dtype: torch.dtype) -> dict:
    """The dtype each network is trained in (as prepare_models sets it), to load it so directly."""
    full = not config.use_lora
    return {"unet": torch.float32 if full else weight_dtype, "vae": weight_dtype,
            **{name: torch.float32 if config.train_text_encoder and full else weight_dtype
               for name in ("text_encoder", "text_encoder_2")}}


def resume(session: Session, path: Path, callbacks) -> None:
    state = load_checkpoint(session.accelerator, path)
    session.global_step, session.last_checkpoint = state["global_step"], path
    session.noise_rng.set_state(state["noise_rng"])
    if session.ema and state.get("ema") is not None:
        session.ema.load_state_dict(state["ema"])
    elif session.ema:  # the checkpoint was written without --use_ema: average from the resumed weights on
        session.ema = CpuEMA(session.accelerator.unwrap_model(session.unet), session.config.ema_decay)
        emit(callbacks, "log", message=f"{path} holds no EMA weights; the average starts at step {session.global_step}")
    emit(callbacks, "log", message=f"Resumed from {path} at step {session.global_step}")


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
            prior_generation_precision=config.prior_generation_precision, variant=config.variant,
            allow_pickle_checkpoints=config.allow_pickle_checkpoints),
            callbacks, stop)
    accelerator.wait_for_everyone()
    return scan_image_folder(config.resolved_class_data_dir, "class")
