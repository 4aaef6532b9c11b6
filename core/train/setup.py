"""Building the pieces the loop needs: accelerator, trainable models, optimizer, data."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from ..data.dataset import DreamBoothDataset, collate
from ..errors import ConfigError
from ..models.attention import resolve_attention, set_attention

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_accelerator(config):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out = Path(config.output_dir)
    log_with = None if config.report_to in (None, "", "none") else config.report_to
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    forget_previous_run_precision()
    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / config.logging_dir)),
    )


def forget_previous_run_precision() -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another precision.

    A host app (ComfyUI, A1111) or a notebook runs several trainings in one process, each with its
    own --mixed_precision, so a single-process run starts from a clean state. Under a distributed
    launch the state holds the process group and must stay.
    """
    from accelerate.state import AcceleratorState
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        AcceleratorState._reset_state(reset_partial_state=True)


def check_optional_features(config) -> None:
    """Features that need optional packages fail before any work is done."""
    if config.resolved_attention == "xformers" and importlib.util.find_spec("xformers") is None:
        raise ConfigError("xformers attention (--attention xformers or --enable_xformers_memory_efficient_attention) "
                          "needs xformers: pip install xformers (or use --attention auto: PyTorch's SDPA).")
    tracker = config.report_to
    if tracker not in ("none", "all", "", None) and importlib.util.find_spec(tracker) is None:
        raise ConfigError(f"--report_to {tracker} needs the {tracker} package: pip install {tracker} "
                          "(or use --report_to none; the loss plot and loss_history.jsonl are always written).")
    if config.resolved_optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("8-bit AdamW (--optimizer adamw8bit or --use_8bit_adam) needs bitsandbytes: "
                          "pip install bitsandbytes (or use --optimizer adafactor, which needs no extra package).")


def choose_attention(config, device):
    """The config with `attention` resolved to the backend this run uses (auto -> the best available)."""
    import dataclasses
    chosen = resolve_attention(config.resolved_attention, device)
    return dataclasses.replace(config, attention=chosen,
                               enable_xformers_memory_efficient_attention=chosen == "xformers")


def add_lora(model, rank: int, alpha: int, target_modules: list[str]) -> None:
    from peft import LoraConfig
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                 target_modules=target_modules))


UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def prepare_models(components, config, weight_dtype: torch.dtype, device) -> list[torch.nn.Module]:
    """Freeze what is not trained, add LoRA (or the identifier's trainable embedding) if asked, move to device.

    Returns the trained modules: [unet], plus the text encoder(s) with --train_text_encoder or
    --train_text_encoder_ti (SDXL's two, as diffusers' SDXL scripts train both), in the order unet,
    text_encoder, text_encoder_2.
    """
    unet, vae = components.unet, components.vae
    encoders = [e for e in (components.text_encoder, getattr(components, "text_encoder_2", None)) if e is not None]
    vae.requires_grad_(False)
    unet.requires_grad_(not config.use_lora)
    for encoder in encoders:
        encoder.requires_grad_(config.train_text_encoder and not config.use_lora)
    if config.use_lora:
        add_lora(unet, config.rank, config.resolved_lora_alpha, UNET_LORA_TARGETS)
        for encoder in encoders if config.train_text_encoder else []:
            add_lora(encoder, config.rank, config.resolved_lora_alpha, TEXT_LORA_TARGETS)
    if config.train_text_encoder_ti:
        from .token_embedding import install_token_rows
        tokenizers = [components.tokenizer, getattr(components, "tokenizer_2", None)]
        for encoder, tokenizer in zip(encoders, tokenizers):
            install_token_rows(encoder, tokenizer, config.identifier_words)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for encoder in encoders if config.trains_text_encoder else []:
            encoder.gradient_checkpointing_enable()
    for module in (unet, vae):  # config.attention was resolved once by choose_attention
        set_attention(module, config.resolved_attention, device)
    trained = [unet] + (encoders if config.trains_text_encoder else [])
    # Frozen parts run in the low-precision dtype; fully trained weights stay fp32 for the optimizer.
    fully_trained = [] if config.use_lora else [unet] + (encoders if config.train_text_encoder else [])
    vae.to(device, dtype=weight_dtype)
    # LoRA or trained embedding rows: base weights low precision, trained ones fp32. Never via an fp32
    # copy of the whole base: for SDXL that transient alone is 10 GB.
    for module in (unet, *encoders):
        module.to(device, dtype=torch.float32 if any(module is m for m in fully_trained) else weight_dtype)
    for module in trained:
        if not any(module is m for m in fully_trained):
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
    return trained


def parameter_groups(trained, config, learning_rate: float, text_encoder_lr: float) -> list[dict]:
    """The optimizer's groups: the UNet's trained weights, then the text encoders' at --text_encoder_lr."""
    text = trainable_parameters(trained[1:])
    # one group, as checkpoints written before --text_encoder_lr hold (pivotal tuning schedules its own)
    if text_encoder_lr == learning_rate and not config.train_text_encoder_ti:
        return [{"params": trainable_parameters(trained[:1]) + text, "lr": learning_rate}]
    groups = [{"params": trainable_parameters(trained[:1]), "lr": learning_rate}]
    if text:
        groups.append({"params": text, "lr": text_encoder_lr})
    return groups


def trainable_parameters(modules) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def make_optimizer(params, config, learning_rate: float):
    """`params`: parameters, or parameter groups (dicts with "params" and their own "lr")."""
    if config.resolved_optimizer == "adafactor":
        # relative_step off: the learning rate is ours, driven by the lr scheduler as with AdamW.
        from transformers.optimization import Adafactor
        return Adafactor(params, lr=learning_rate, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=config.adam_weight_decay)
    if config.resolved_optimizer == "adamw8bit":
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(params, lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                   weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    return torch.optim.AdamW(params, lr=learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
                             **adamw_implementation(params))


def adamw_implementation(params) -> dict:
    """The fused AdamW kernel wherever torch has one for the parameters' device.

    torch picks the per-tensor loop on CPU by default; for SD 1.5's 860 M UNet weights on 2 CPU
    cores that loop takes ~4 s a step, the fused kernel ~0.7 s (benchmarks/RESULTS.md), and fused
    allocates no list-wide temporaries as foreach does. Same update rule, same state dict.
    """
    params = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    devices = {p.device.type for p in params}
    fused_ok = len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    return {"fused": True} if fused_ok else {}


def make_lr_scheduler(optimizer, config, max_train_steps: int, num_processes: int):
    from diffusers.optimization import get_scheduler
    return get_scheduler(config.lr_scheduler, optimizer=optimizer,
                         num_warmup_steps=config.lr_warmup_steps * num_processes,
                         num_training_steps=max_train_steps * num_processes,
                         num_cycles=config.lr_num_cycles, power=config.lr_power)


def end_text_group_at(lr_scheduler, stop_step: int) -> None:
    """From scheduler step `stop_step` on, the text group's learning rate is 0 (--train_text_encoder_ti_frac).

    Its parameters keep their gradients, so a DDP run (which expects every parameter it was built
    with to get one) is unaffected, and at lr 0 AdamW's update and its weight decay are both zero.
    A plain function, not an object, so LambdaLR's state_dict (saved in checkpoints) leaves it out.
    """
    from torch.optim.lr_scheduler import LambdaLR
    if not isinstance(lr_scheduler, LambdaLR) or len(lr_scheduler.lr_lambdas) < 2:
        raise ValueError("end_text_group_at needs a LambdaLR over [unet, text] parameter groups")
    inner = lr_scheduler.lr_lambdas[1]

    def text_factor(step: int) -> float:
        return inner(step) if step < stop_step else 0.0

    lr_scheduler.lr_lambdas[1] = text_factor
    lr_scheduler.optimizer.param_groups[1]["lr"] = lr_scheduler.base_lrs[1] * text_factor(lr_scheduler.last_epoch)


class EpochShuffleSampler(Sampler):
    """A permutation that depends only on (seed, epoch), so a resumed run sees the same order.

    The method is deliberately not called `set_epoch`: accelerate calls that on samplers with its
    own count of iterations, which restarts at 0 for the loader that skips batches on resume.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g).tolist())

    def __len__(self) -> int:
        return self.size


def make_dataloader(dataset: DreamBoothDataset, config, seed: int):
    sampler = EpochShuffleSampler(len(dataset), seed)
    loader = DataLoader(dataset, batch_size=config.train_batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=config.dataloader_num_workers)
    return loader, sampler


def schedule_lengths(config, batches_per_epoch: int) -> tuple[int, int, int]:
    """(updates per epoch, max train steps, epochs), as in diffusers' script."""
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / config.gradient_accumulation_steps))
    max_steps = config.max_train_steps or config.num_train_epochs * updates_per_epoch
    epochs = math.ceil(max_steps / updates_per_epoch)
    return updates_per_epoch, max_steps, epochs
