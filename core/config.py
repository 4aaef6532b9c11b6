"""Job configurations: the single source of truth for every job.

Each job (train, class images, generate) has one dataclass. CLI flags, TOML files,
ComfyUI node inputs and A1111 tab fields all map onto these fields by name; the
trainer reads them and never mutates them; a copy is saved beside every output.

Field names follow diffusers' `examples/dreambooth/train_dreambooth.py` so that
existing command lines keep working.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError
from .fsutil import atomic_write_text

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (A1111 1.10 runs on it)
    import tomli as tomllib


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with help text (shown by the CLI and the UIs)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


# Flags of diffusers' script that we accept so command lines parse, but cannot honour.
# Each maps to the reason shown to the user; a set value fails validation.
UNSUPPORTED_FLAGS = {
    "push_to_hub": "pushing to the Hugging Face Hub is not supported; upload output_dir yourself",
    "hub_token": "pushing to the Hugging Face Hub is not supported",
    "hub_model_id": "pushing to the Hugging Face Hub is not supported",
    "class_labels_conditioning": "class-label conditioning (DeepFloyd IF upscaler) is not supported",
    "validation_images": "image-conditioned validation (DeepFloyd IF upscaler) is not supported",
}

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")
LORA_FORMATS = ("kohya", "diffusers")
ATTENTION_CHOICES = ("auto", "xformers", "sdpa", "sliced", "math")  # see models/attention.py


@dataclass(frozen=True)
class TrainConfig:
    """Everything a DreamBooth training run needs."""

    # --- model and data -------------------------------------------------------
    pretrained_model_name_or_path: Optional[str] = opt(None, "Base model: a diffusers folder, a .safetensors checkpoint (SD 1.x/2.x/XL), or a hub id when online.")
    revision: Optional[str] = opt(None, "Revision of the base model on the hub.")
    variant: Optional[str] = opt(None, "Variant of the model files to load, e.g. 'fp16'.")
    tokenizer_name: Optional[str] = opt(None, "Tokenizer folder, if not the base model's.")
    instance_data_dir: Optional[str] = opt(None, "Folder with the subject's photos (3-30 images).")
    class_data_dir: Optional[str] = opt(None, "Folder of class images for prior preservation (topped up by generation); a name.txt beside an image is its caption, else --class_prompt. Default: OUTPUT_DIR/class_images.")
    instance_prompt: Optional[str] = opt(None, "Prompt with the rare identifier, e.g. 'a photo of sks dog'.")
    class_prompt: Optional[str] = opt(None, "Prompt for the class, e.g. 'a photo of dog'.")
    with_prior_preservation: bool = opt(False, "Add the class-specific prior-preservation loss.")
    prior_loss_weight: float = opt(1.0, "Weight of the prior-preservation loss.")
    num_class_images: int = opt(100, "Minimum number of class images; missing ones are generated with the base model.")
    output_dir: str = opt("dreambooth-model", "Where the model, checkpoints, samples, loss plot and config go.")
    seed: Optional[int] = opt(None, "Seed for reproducible training.")
    resolution: int = opt(512, "Training resolution (images are resized, then cropped to a square).")
    center_crop: bool = opt(False, "Center-crop instead of random-crop.")
    random_flip: bool = opt(False, "Randomly flip images horizontally.")
    caption_dropout_rate: float = opt(0.0, "Train this fraction of images (instance and class alike) with an empty caption, as kohya's --caption_dropout_rate: the UNet keeps learning the unconditional prediction classifier-free guidance subtracts.")
    aspect_ratio_bucketing: bool = opt(False, "Keep each image's shape: train it at the bucket (a width x height of about resolution² pixels, sides multiples of --bucket_reso_steps, aspect 1:4 to 4:1) nearest its aspect ratio, one bucket per batch; class images are cropped to their instance image's bucket. kohya's --enable_bucket.")
    bucket_reso_steps: int = opt(64, "Bucket sides are multiples of this many pixels (with --aspect_ratio_bucketing).")
    # --- what to train --------------------------------------------------------
    train_text_encoder: bool = opt(False, "Also train the text encoder.")
    train_text_encoder_ti: bool = opt(False, "Pivotal tuning: also train the token embedding of the identifier (the words --instance_prompt adds to --class_prompt, e.g. 'sks'; or --token_abstraction), i.e. textual inversion inside DreamBooth; the rest of the text encoder stays frozen. The rows are trained in place (no tokens are added), so saved models keep the base's shapes; a LoRA run also writes OUTPUT_DIR/embeddings/<word>.safetensors, an embedding A1111 and ComfyUI load. As diffusers' advanced DreamBooth scripts.")
    train_text_encoder_ti_frac: float = opt(0.5, "With --train_text_encoder_ti: the fraction of the steps during which the embedding trains; after it the embedding stays as it is and the UNet trains on (diffusers' pivotal tuning default, 0.5).")
    token_abstraction: Optional[str] = opt(None, "With --train_text_encoder_ti: the identifier word(s) whose embeddings are trained, comma-separated (default: the words of --instance_prompt that --class_prompt lacks).")
    text_encoder_lr: Optional[float] = opt(None, "Learning rate of the text encoder's trained weights with --train_text_encoder or --train_text_encoder_ti (default: --learning_rate); embeddings usually want a higher one than the UNet.")
    use_lora: bool = opt(False, "Train LoRA adapters instead of the full weights.")
    rank: int = opt(4, "LoRA rank.")
    lora_alpha: Optional[int] = opt(None, "LoRA alpha (default: equal to the rank).")
    lora_format: str = opt("kohya", "LoRA file format: kohya (OUTPUT_DIR/<name>.safetensors with lora_unet_*/lora_te_* keys and alpha; A1111, ComfyUI and diffusers load it) or diffusers (pytorch_lora_weights.safetensors, PEFT keys).", choices=LORA_FORMATS)
    lora_save_precision: str = opt("fp16", "Precision of the saved LoRA weights: fp16, bf16 or fp32.", choices=("fp16", "bf16", "fp32"))
    # --- schedule -------------------------------------------------------------
    train_batch_size: int = opt(4, "Instance images per step (as many class images are added).")
    sample_batch_size: int = opt(4, "Batch size when generating class images.")
    num_train_epochs: int = opt(1, "Epochs (overridden by max_train_steps).")
    max_train_steps: Optional[int] = opt(None, "Total optimizer steps; overrides num_train_epochs.")
    checkpointing_steps: int = opt(500, "Save a resumable checkpoint every N steps.")
    checkpoints_total_limit: Optional[int] = opt(None, "Keep at most this many checkpoints.")
    resume_from_checkpoint: Optional[str] = opt(None, "A checkpoint folder, or 'latest'.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.")
    gradient_checkpointing: bool = opt(False, "Trade compute for memory in the UNet (and text encoder).")
    learning_rate: float = opt(5e-6, "Initial learning rate (after warmup).")
    scale_lr: bool = opt(False, "Scale the learning rate by GPUs, accumulation steps and batch size.")
    lr_scheduler: str = opt("constant", "One of " + ", ".join(LR_SCHEDULERS) + ".", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = opt(500, "Warmup steps of the scheduler.")
    lr_num_cycles: int = opt(1, "Hard resets of cosine_with_restarts.")
    lr_power: float = opt(1.0, "Power of the polynomial scheduler.")
    use_8bit_adam: bool = opt(False, "8-bit AdamW from bitsandbytes (must be installed); same as --optimizer adamw8bit.")
    optimizer: str = opt("adamw", "adamw, adamw8bit (bitsandbytes: a quarter of AdamW's state memory) or adafactor (transformers: factored second moment, no first moment; about as small as adamw8bit for SD's UNet, whose 3x3 convolutions factor poorly, and needs no extra package).", choices=OPTIMIZERS)
    dataloader_num_workers: int = opt(0, "Data-loading subprocesses.")
    adam_beta1: float = opt(0.9, "AdamW beta1.")
    adam_beta2: float = opt(0.999, "AdamW beta2.")
    adam_weight_decay: float = opt(1e-2, "AdamW weight decay.")
    adam_epsilon: float = opt(1e-08, "AdamW epsilon.")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.")
    # --- loss -----------------------------------------------------------------
    offset_noise: bool = opt(False, "Add offset noise (0.1) to the sampled noise.")
    snr_gamma: Optional[float] = opt(None, "Min-SNR weighting gamma (5.0 is recommended); off when unset.")
    # --- precision and memory -------------------------------------------------
    mixed_precision: Optional[str] = opt(None, "no, fp16 or bf16 (default: accelerate's setting).", choices=MIXED_PRECISIONS)
    prior_generation_precision: Optional[str] = opt(None, "Precision of class-image generation: no, fp32, fp16, bf16.", choices=("no", "fp32", "fp16", "bf16"))
    allow_tf32: bool = opt(False, "Allow TF32 matmuls on Ampere GPUs.")
    enable_xformers_memory_efficient_attention: bool = opt(False, "Use xformers attention (must be installed); same as --attention xformers.")
    attention: str = opt("auto", "Attention backend: " + ", ".join(ATTENTION_CHOICES) + ". auto takes the fastest available (xformers on CUDA if installed, else sdpa); sliced saves memory; math is the plain reference. The run's config records the backend used.", choices=ATTENTION_CHOICES)
    fused_backward_pass: bool = opt(False, "Update each weight as soon as its gradient is complete during the backward pass, then free that gradient: the model's gradients never exist all at once (full SDXL: ~10 GB less). Same update rule; needs --gradient_accumulation_steps 1, not fp16, one process; --max_grad_norm clipping is not applied (use Adafactor, which clips its updates). kohya's --fused_backward_pass.")
    set_grads_to_none: bool = opt(True, "Free the gradients after each optimizer step instead of zeroing them, so they and the next forward's activations never coexist (same results, less memory; diffusers' default is off: --no-set_grads_to_none).")
    cache_latents: bool = opt(True, "Encode every image once through the VAE before training, then free the VAE. Images are centre-cropped once (random crops need --no-cache_latents); with --random_flip both orientations are cached.")
    use_ema: bool = opt(False, "Keep an exponential moving average of the UNet weights in CPU memory; the saved model uses it.")
    ema_decay: float = opt(0.9999, "EMA decay (diffusers' EMAModel warms up towards it: min(decay, (1+n)/(10+n))).")
    memory_budget: Optional[str] = opt(None, "Memory the run may use, e.g. 8GB, 8000MB or 12.5G: training warns at start when the predicted peak exceeds it (default: the device's memory). `dreambooth plan --memory_budget 8GB` picks settings that fit.")
    pre_compute_text_embeddings: bool = opt(False, "Encode prompts once and free the text encoder.")
    tokenizer_max_length: Optional[int] = opt(None, "Tokenizer max length (default: the tokenizer's).")
    text_encoder_use_attention_mask: bool = opt(False, "Pass the attention mask to the text encoder.")
    # --- outputs and validation ----------------------------------------------
    skip_save_text_encoder: bool = opt(False, "Do not save the text encoder with the final model.")
    save_single_file: bool = opt(True, "Also save a full fine-tune as one OUTPUT_DIR/<name>.safetensors in the original (LDM) layout that A1111 and ComfyUI load.")
    save_precision: str = opt("fp16", "Precision of that single file: fp16 or fp32.", choices=("fp16", "fp32"))
    allow_pickle_checkpoints: bool = opt(False, "Allow .ckpt/.pt/.bin base models: pickle files can run code when loaded, so only for files you trust (tried with torch.load(weights_only=True) first).")
    validation_prompt: Optional[str] = opt(None, "Prompt(s) for sample grids, separated by '|'.")
    num_validation_images: int = opt(4, "Images per validation prompt.")
    validation_steps: int = opt(100, "Write a sample grid every N steps.")
    validation_scheduler: str = opt("DPMSolverMultistepScheduler", "Scheduler for validation images.", choices=("DPMSolverMultistepScheduler", "DDPMScheduler"))
    num_validation_inference_steps: int = opt(25, "Denoising steps for validation images.")
    checkpoint_metric: Optional[str] = opt(None, "Score every checkpoint with a DreamBooth-paper metric and report the best by it: DINO, CLIP-I, CLIP-T, PRES (lower is better), DIV (these need --metric_dino_model and --metric_clip_model), or toy_subject, toy_fidelity, toy_background, toy_pres, toy_div (the toy world's own checker; for the shipped toy-world base). All scores go to OUTPUT_DIR/checkpoint_scores.jsonl.", choices=("DINO", "CLIP-I", "CLIP-T", "PRES", "DIV", "toy_subject", "toy_fidelity", "toy_background", "toy_pres", "toy_div"))
    metric_dino_model: Optional[str] = opt(None, "Local DINO weights (a transformers folder) for --checkpoint_metric.")
    metric_clip_model: Optional[str] = opt(None, "Local CLIP weights (a transformers folder) for --checkpoint_metric.")
    metric_num_images: int = opt(4, "Images per prompt when --checkpoint_metric scores a checkpoint.")
    keep_best_model: bool = opt(False, "With --checkpoint_metric: keep the best-scoring checkpoint in OUTPUT_DIR/best-model (a diffusers pipeline; with --use_lora its LoRA file and the run's config), which generate --model loads.")
    # --- logging and launch (accepted for compatibility) ---------------------
    logging_dir: str = opt("logs", "Tracker log folder, under output_dir.")
    report_to: str = opt("none", "Trackers for accelerate (tensorboard, wandb, all, none). Our loss plot is always written.")
    local_rank: int = opt(-1, "Set by the launcher; accepted for compatibility.")
    stop_file: Optional[str] = opt(None, "If this file appears, save a resumable checkpoint and stop.")
    # --- unsupported flags of diffusers' script (validated below) -------------
    push_to_hub: bool = opt(False, UNSUPPORTED_FLAGS["push_to_hub"])
    hub_token: Optional[str] = opt(None, UNSUPPORTED_FLAGS["hub_token"])
    hub_model_id: Optional[str] = opt(None, UNSUPPORTED_FLAGS["hub_model_id"])
    class_labels_conditioning: Optional[str] = opt(None, UNSUPPORTED_FLAGS["class_labels_conditioning"])
    validation_images: Optional[list[str]] = opt(None, UNSUPPORTED_FLAGS["validation_images"], nargs="+")

    def __post_init__(self) -> None:
        problems = list(_type_problems(self)) or list(_train_problems(self))
        if problems:
            raise ConfigError("Invalid training configuration:\n  - " + "\n  - ".join(problems))

    # Derived values live here, not in the trainer, so every adapter sees the same.
    @property
    def resolved_class_data_dir(self) -> str:
        return self.class_data_dir or str(Path(self.output_dir) / "class_images")

    @property
    def resolved_lora_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else self.rank

    @property
    def resolved_attention(self) -> str:
        """The backend asked for; --enable_xformers_memory_efficient_attention means xformers."""
        return "xformers" if self.enable_xformers_memory_efficient_attention else self.attention

    @property
    def resolved_optimizer(self) -> str:
        """The optimizer asked for; --use_8bit_adam means adamw8bit."""
        return "adamw8bit" if self.use_8bit_adam else self.optimizer

    @property
    def trains_text_encoder(self) -> bool:
        """Some of the text encoder is trained: all of it (or its LoRA), or the identifier's embedding."""
        return self.train_text_encoder or self.train_text_encoder_ti

    @property
    def identifier_words(self) -> list[str]:
        """With --train_text_encoder_ti: the words whose token embeddings are trained."""
        from .train.token_embedding import identifier_words
        return identifier_words(self.instance_prompt, self.class_prompt, self.token_abstraction)

    @property
    def validation_prompts(self) -> list[str]:
        if not self.validation_prompt:
            return []
        return [p.strip() for p in self.validation_prompt.split("|") if p.strip()]


def _train_problems(c: TrainConfig):
    for name, reason in UNSUPPORTED_FLAGS.items():
        value = getattr(c, name)
        if value not in (None, False):
            yield f"--{name}: {reason}."
    if not c.pretrained_model_name_or_path:
        yield "--pretrained_model_name_or_path is required (a diffusers folder; `dreambooth make-tiny-model DIR` builds a test one)."
    if not c.instance_data_dir:
        yield "--instance_data_dir is required: the folder with your subject's photos."
    if not c.instance_prompt:
        yield "--instance_prompt is required, e.g. 'a photo of sks dog'."
    if c.with_prior_preservation and not c.class_prompt:
        yield "--with_prior_preservation needs --class_prompt, e.g. 'a photo of dog'."
    if c.enable_xformers_memory_efficient_attention and c.attention not in ("auto", "xformers"):
        yield f"--enable_xformers_memory_efficient_attention conflicts with --attention {c.attention}; keep one."
    if c.use_8bit_adam and c.optimizer not in ("adamw", "adamw8bit"):
        yield f"--use_8bit_adam conflicts with --optimizer {c.optimizer}; keep one."
    if c.use_ema and c.use_lora:
        yield "--use_ema averages full UNet weights; it cannot be used with --use_lora."
    if not 0 <= c.ema_decay <= 1:
        yield f"--ema_decay must be between 0 and 1 (got {c.ema_decay})."
    if c.memory_budget is not None:
        from .plan import parse_size
        try:
            parse_size(c.memory_budget)
        except ValueError as e:
            yield f"--memory_budget: {e}"
    if c.fused_backward_pass and (c.gradient_accumulation_steps > 1 or c.mixed_precision == "fp16"):
        yield ("--fused_backward_pass updates each weight inside the backward pass: it cannot accumulate gradients "
               "(--gradient_accumulation_steps 1) nor scale an fp16 loss (use --mixed_precision bf16 or no).")
    if c.train_text_encoder and c.pre_compute_text_embeddings:
        yield "--train_text_encoder cannot be used with --pre_compute_text_embeddings."
    if c.train_text_encoder_ti:
        yield from _ti_problems(c)
    if not 0 <= c.caption_dropout_rate < 1:
        yield f"--caption_dropout_rate must be in [0, 1) (got {c.caption_dropout_rate})."
    if c.text_encoder_lr is not None and c.text_encoder_lr <= 0:
        yield f"--text_encoder_lr must be > 0 (got {c.text_encoder_lr})."
    positive = ("resolution", "train_batch_size", "sample_batch_size", "num_train_epochs",
                "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "rank",
                "num_validation_images", "num_validation_inference_steps")
    for name in positive:
        if getattr(c, name) < 1:
            yield f"--{name} must be at least 1 (got {getattr(c, name)})."
    if c.max_train_steps is not None and c.max_train_steps < 1:
        yield f"--max_train_steps must be at least 1 (got {c.max_train_steps})."
    if c.resolution % 8:
        yield f"--resolution must be a multiple of 8 (got {c.resolution})."
    if c.checkpoint_metric and not c.class_prompt:
        yield "--checkpoint_metric needs --class_prompt (PRES and DIV are measured on class-prompt images)."
    if c.checkpoint_metric and not c.checkpoint_metric.startswith("toy_") and not (c.metric_dino_model and c.metric_clip_model):
        yield f"--checkpoint_metric {c.checkpoint_metric} needs local DINO and CLIP weights: --metric_dino_model DIR --metric_clip_model DIR."
    if c.keep_best_model and not c.checkpoint_metric:
        yield "--keep_best_model needs --checkpoint_metric (the metric that decides which checkpoint is best)."
    if c.bucket_reso_steps < 8 or c.bucket_reso_steps % 8:
        yield f"--bucket_reso_steps must be a positive multiple of 8 (got {c.bucket_reso_steps})."
    if c.num_class_images < 0 or c.prior_loss_weight < 0 or c.learning_rate <= 0:
        yield "--num_class_images and --prior_loss_weight must be >= 0 and --learning_rate > 0."
    if c.checkpoints_total_limit is not None and c.checkpoints_total_limit < 1:
        yield "--checkpoints_total_limit must be at least 1."
    yield from _choice_problems(c)


def _ti_problems(c: TrainConfig):
    if c.train_text_encoder:
        yield ("--train_text_encoder_ti trains the identifier's embedding only; --train_text_encoder trains the "
               "whole text encoder, embeddings included. Keep one.")
    if c.pre_compute_text_embeddings:
        yield "--train_text_encoder_ti cannot be used with --pre_compute_text_embeddings (the prompts' encoding changes)."
    if c.skip_save_text_encoder and not c.use_lora:
        yield "--train_text_encoder_ti with --skip_save_text_encoder would drop the trained embedding; keep the text encoder."
    if not 0 < c.train_text_encoder_ti_frac <= 1:
        yield f"--train_text_encoder_ti_frac must be in (0, 1] (got {c.train_text_encoder_ti_frac})."
    words = c.identifier_words
    if not words:
        yield ("--train_text_encoder_ti needs the identifier: --token_abstraction sks, or a --class_prompt that "
               "--instance_prompt extends (e.g. 'a photo of dog' and 'a photo of sks dog').")
    from .train.token_embedding import prompt_words
    missing = [w for w in words if c.instance_prompt and w not in prompt_words(c.instance_prompt)]
    if missing:
        yield f"--token_abstraction {', '.join(missing)}: not a word of --instance_prompt '{c.instance_prompt}'."


def _field_kind(hint):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        return _field_kind(args[0])
    return typing.get_origin(hint) or hint


def _type_problems(c):
    """Values from TOML, JSON or a UI arrive untyped; "false" must not pass as a true bool."""
    hints = typing.get_type_hints(type(c))
    for f in dataclasses.fields(c):
        value, kind = getattr(c, f.name), _field_kind(hints[f.name])
        if value is None:
            continue
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            yield f"--{f.name} must be {'a list of strings' if kind is list else kind.__name__} (got {value!r})."


def _choice_problems(c):
    for f in dataclasses.fields(c):
        choices = f.metadata.get("choices")
        value = getattr(c, f.name)
        if choices and value is not None and value not in choices:
            yield f"--{f.name} must be one of {', '.join(choices)} (got {value!r})."


SCHEDULERS = ("DDIM", "Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDPM", "PNDM")


@dataclass(frozen=True)
class GenerateConfig:
    """Text-to-image generation from a trained model."""

    model: Optional[str] = opt(None, "A trained output folder, a diffusers model folder or a .safetensors checkpoint.")
    prompt: Optional[str] = opt(None, "What to draw, e.g. 'a photo of sks dog on the beach'.")
    negative_prompt: str = opt("", "What to avoid.")
    num_images: int = opt(4, "How many images.")
    batch_size: int = opt(4, "Images per forward pass.")
    seed: int = opt(0, "Seed of the first image; image i uses seed + i. -1 picks a random one (as in A1111); the PNG records it.")
    num_inference_steps: int = opt(30, "Denoising steps.")
    guidance_scale: float = opt(7.5, "Classifier-free guidance scale.")
    scheduler: str = opt("DPM++ 2M Karras", "Sampler: " + ", ".join(SCHEDULERS) + ".", choices=SCHEDULERS)
    width: Optional[int] = opt(None, "Width in pixels (default: the model's native size).")
    height: Optional[int] = opt(None, "Height in pixels (default: the model's native size).")
    lora: Optional[str] = opt(None, "A LoRA file (kohya/A1111 or diffusers format) applied on top of --model.")
    lora_scale: float = opt(1.0, "LoRA strength: 0 is the base model, 1 the trained one (also for a trained LoRA folder as --model).")
    init_image: Optional[str] = opt(None, "img2img: start from this photo instead of noise (output keeps its size unless --width/--height).")
    strength: float = opt(0.75, "Denoising strength for img2img/inpainting: 0 keeps the photo, 1 redraws it entirely.")
    mask_image: Optional[str] = opt(None, "Inpainting (with --init_image): white where to draw, black where the photo is kept.")
    mask_blur: int = opt(4, "Inpainting: blur radius (pixels) of the mask's edge when pasting the result into the photo.")
    output_dir: str = opt("generated", "Where the PNGs go.")
    precision: str = opt("fp32", "fp32, fp16 or bf16.", choices=("fp32", "fp16", "bf16"))
    allow_pickle_checkpoints: bool = opt(False, "Allow .ckpt/.pt/.bin base models: pickle files can run code when loaded, so only for files you trust (tried with torch.load(weights_only=True) first).")

    def __post_init__(self) -> None:
        problems = list(_type_problems(self))
        if problems:
            raise ConfigError("Invalid generation configuration:\n  - " + "\n  - ".join(problems))
        if not self.model:
            problems.append("--model is required: a trained output folder or a diffusers model folder.")
        if not self.prompt:
            problems.append("--prompt is required.")
        for name in ("num_images", "batch_size", "num_inference_steps"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be at least 1.")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                problems.append(f"--{name} must be a positive multiple of 8 (got {v}).")
        if not 0 < self.strength <= 1:
            problems.append(f"--strength must be in (0, 1] (got {self.strength}).")
        if self.mask_image and not self.init_image:
            problems.append("--mask_image needs --init_image: the photo to paint into.")
        if self.mask_blur < 0:
            problems.append(f"--mask_blur must be >= 0 (got {self.mask_blur}).")
        problems.extend(_choice_problems(self))
        if problems:
            raise ConfigError("Invalid generation configuration:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class ClassImagesConfig:
    """Top up a class-image folder with images the base model draws for the class prompt."""

    pretrained_model_name_or_path: Optional[str] = opt(None, "Base model: a diffusers folder or a .safetensors checkpoint.")
    class_prompt: Optional[str] = opt(None, "Prompt for the class, e.g. 'a photo of dog'.")
    class_prompts_file: Optional[str] = opt(None, "A text file of class prompts, one per line, instead of --class_prompt: image k is drawn with line k (cycling), and its prompt is saved beside it as its caption (class_k.txt), which training reads, as kohya's captioned regularisation images.")
    class_data_dir: Optional[str] = opt(None, "Folder to fill; existing images are reused.")
    num_class_images: int = opt(100, "How many class images the folder should hold.")
    sample_batch_size: int = opt(4, "Images per forward pass.")
    seed: int = opt(0, "Seed of the first generated image; image i uses seed + i.")
    num_inference_steps: int = opt(25, "Denoising steps per image.")
    guidance_scale: float = opt(7.5, "Classifier-free guidance scale.")
    resolution: Optional[int] = opt(None, "Image size (default: the model's native size).")
    prior_generation_precision: Optional[str] = opt(None, "no, fp32, fp16 or bf16.", choices=("no", "fp32", "fp16", "bf16"))
    variant: Optional[str] = opt(None, "Variant of the model files to load, e.g. 'fp16'.")
    allow_pickle_checkpoints: bool = opt(False, "Allow .ckpt/.pt/.bin base models: pickle files can run code when loaded, so only for files you trust (tried with torch.load(weights_only=True) first).")

    def __post_init__(self) -> None:
        problems = list(_type_problems(self))
        if problems:
            raise ConfigError("Invalid class-image configuration:\n  - " + "\n  - ".join(problems))
        if not self.pretrained_model_name_or_path:
            problems.append("--pretrained_model_name_or_path is required.")
        if not self.class_prompt and not self.class_prompts_file:
            problems.append("--class_prompt is required, e.g. 'a photo of dog' (or --class_prompts_file).")
        if self.class_prompt and self.class_prompts_file:
            problems.append("Give --class_prompt or --class_prompts_file, not both.")
        if self.class_prompts_file and not Path(self.class_prompts_file).expanduser().is_file():
            problems.append(f"--class_prompts_file {self.class_prompts_file} is not a file.")
        if not self.class_data_dir:
            problems.append("--class_data_dir is required.")
        if self.num_class_images < 0 or self.sample_batch_size < 1:
            problems.append("--num_class_images must be >= 0 and --sample_batch_size >= 1.")
        problems.extend(_choice_problems(self))
        if problems:
            raise ConfigError("Invalid class-image configuration:\n  - " + "\n  - ".join(problems))


JOB_CONFIGS = {"train": TrainConfig, "generate": GenerateConfig, "class-images": ClassImagesConfig}


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls, data: dict):
    """Build a config from a mapping, rejecting unknown keys with the list of valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} option(s): {', '.join(unknown)}. "
                          f"Valid options: {', '.join(sorted(names))}.")
    return cls(**data)


def load_config_file(path: str | Path) -> dict:
    """Read a .toml or .json config file into a plain dict (no validation yet)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"Cannot parse {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of options (name = value), not {type(data).__name__}.")
    # a saved job file wraps the config with its job kind
    return data.get("config", data) if isinstance(data.get("config"), dict) else data


def save_job_file(path: str | Path, job: str, config) -> Path:
    """Save a job (its kind plus its config) as JSON, atomically. Workers start from this."""
    payload = {"job": job, "config": config_to_dict(config)}
    return atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=True))


def load_job_file(path: str | Path):
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    job = data.get("job")
    if job not in JOB_CONFIGS:
        raise ConfigError(f"{path}: unknown job {job!r}; expected one of {', '.join(JOB_CONFIGS)}.")
    return job, config_from_dict(JOB_CONFIGS[job], data["config"])
