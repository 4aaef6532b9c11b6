"""Pretrain a complete Stable-Diffusion-family pipeline on the toy world, from scratch, on CPU.

Two stages, the way Stable Diffusion itself was made: (1) an AutoencoderKL learns to compress the
64x64 world images 4x per side; its latents are then computed once (the VAE is frozen afterwards);
(2) a UNet2DConditionModel and a small CLIP text encoder learn together to denoise those latents
given the captions. The result is an ordinary diffusers StableDiffusionPipeline folder in fp16.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch.nn import functional as F

from ..cpu_precision import cpu_autocast, cpu_autocast_name, slow_bf16_warning
from .text_pretrain import POOLINGS, TEXT_OBJECTIVES, pretrain_on_words
from .token_loss import SPANS, TokenReconstruction, inverse_document_frequency
from .world import make_dataset, random_colour_images

Log = Callable[[str], None]


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    num_images: int = 20_000
    vae_steps: int = 0  # 0: as many as fit in vae_minutes (the steps taken are recorded in MADE.md)
    vae_minutes: float = 5.0
    vae_batch_size: int = 32
    vae_lr: float = 3e-3
    vae_channels: tuple[int, ...] = (32, 64, 64)
    kl_weight: float = 1e-6
    # the share of the VAE's training pictures drawn in any RGB colours (world.random_colour_image), so that
    # it encodes colours the world never names, as SD's VAE does; trained on the palette alone it decoded
    # the DreamBooth subject's orange and cyan as green and blue, which no fine-tuning could undo
    vae_random_colour_share: float = 0.0
    # > 0: after the UNet has trained, refit the VAE for this many steps on world and random-colour pictures,
    # keeping its world latents where the UNet learned them (sksbooth.toyworld.vae_refit): the shipped base's
    # last stage, which made its VAE decode the subject's cyan as cyan instead of blue
    vae_refit_steps: int = 0
    # a diffusers pipeline folder (or its vae/ folder) whose VAE to use instead of training one: the shipped
    # base's refit VAE lets a UNet trial skip the VAE's 14 minutes (its latents are recomputed and rescaled)
    vae_from: str = ""
    unet_steps: int = 0  # 0: as many as fit in unet_minutes
    unet_minutes: float = 30.0
    unet_batch_size: int = 32
    unet_lr: float = 1e-3
    text_width: int = 64  # the token-embedding table (49,408 x width) is most of the shipped size
    unet_channels: tuple[int, ...] = (32, 64, 128)
    attention_heads: int = 1  # diffusers calls it attention_head_dim (SD 1.x legacy); head width = channels / heads
    caption_dropout: float = 0.1  # empty captions teach the unconditional prediction classifier-free guidance needs
    snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023)
    # v-prediction (SD 2.x's 768-v parametrization) with the "high_noise" weighting learns the captions'
    # colours several times sooner than epsilon with min-SNR: measured at 900 steps, object / background
    # colour 98% / 100% vs chance for epsilon (with either weighting)
    prediction_type: str = "v_prediction"
    loss_weighting: str = "high_noise"  # or "min_snr" (see sksbooth.train.losses)
    snr_floor: float = 0.0  # with "min_snr": the least x0-space weight of any step
    mixed_precision: str = "no"  # "bf16": autocast the denoiser's forward pass
    # > 0: ship an exponential moving average of the UNet's weights (diffusers' EMAModel, with its warm-up),
    # as SD's own checkpoints are; the last weights are saved too, beside the base, to compare
    unet_ema_decay: float = 0.0
    # Trial options, off in the shipped base (MADE.md has the results). Trained jointly from scratch, the
    # encoder merges "circle" with "square" and "triangle" with "toy" (states 0.99 cosine-similar), so the
    # base draws the same shape for either word. Frozen embeddings alone did not help (the layers merged the
    # pairs instead); a wholly frozen random encoder kept them apart but says too little about any caption.
    freeze_token_embeddings: bool = False
    freeze_text_encoder: bool = False
    # either > 0: first train the text encoder CLIP-style against the images for this long (sksbooth.toyworld.
    # text_pretrain), then keep it frozen while the UNet trains, as Stable Diffusion's CLIP encoder is. The best
    # base shape yet (85% with 9 of the 40 minutes), but the frozen encoder reads "sks toy" as "toy", so
    # DreamBooth with the UNet alone bound the subject less often: not shipped (MADE.md)
    text_encoder_steps: int = 0
    text_encoder_minutes: float = 0.0
    text_encoder_lr: float = 3e-3
    # the caption vector of that pretraining: "mean" of all states (85% shape) or "eos", CLIP's end-of-text
    # state (83%), which keeps "sks" in the states but bound DreamBooth's subject less often still (MADE.md)
    text_encoder_pooling: str = "mean"
    # what that pretraining teaches: "contrastive" (CLIP-style, against the images, above) or "words": captions
    # alone, each state naming every caption word up to it (text_pretrain.pretrain_on_words, with token_loss's
    # prefix loss; seconds, not minutes)
    text_encoder_objective: str = "contrastive"
    # with "words": the share of captions given one random token the world never uses, which the states must
    # name as "unknown", so that DreamBooth's "sks toy" is not read as "a toy"
    text_encoder_unknown_share: float = 0.0
    # > 0: after that pretraining, keep training the encoder with the UNet at this lr instead of freezing
    # it (the jointly trained shipped base binds DreamBooth's subject; the frozen one does not)
    text_encoder_joint_lr: float = 0.0
    # > 0: while the encoder trains with the UNet, also make its states name caption words (sksbooth.toyworld.
    # token_loss), weighted thus against the denoising loss, so the encoder cannot merge two shape words
    text_token_loss_weight: float = 0.0
    # what each state must name: "own", its own word (which the shape words' states then kept, 0.19 cosine,
    # but the states after them did not: 0.99), or "prefix", every caption word up to it, the rarer the more
    text_token_loss_span: str = "own"

    @property
    def pretrains_text_encoder(self) -> bool:
        """Whether the text encoder is pretrained on its own before the UNet (by either objective)."""
        return self.text_encoder_steps > 0 or self.text_encoder_minutes > 0

    # > 0: the UNet also learns this many named objects (sksbooth.toyworld.named_objects): each a fixed look of one
    # of the world's classes called by a word of its own ("a photo of a qux toy"), as SD's web captions name
    # brands and pets, so that a rare word before a class noun already means "this one" to the base; they make
    # up `named_object_share` of the UNet's images. The text encoder learns their words as world words, as SD's CLIP
    # knows brand names: left unknown to it, all 16 words read alike and the UNet drew one blur of all the looks
    named_objects: int = 0
    named_object_share: float = 0.1

    def __post_init__(self):
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"--mixed_precision must be 'no' or 'bf16', not {self.mixed_precision!r}")
        if self.vae_refit_steps < 0:
            raise ValueError(f"--vae_refit_steps must be 0 (no refit) or more, not {self.vae_refit_steps}")
        if not 0 <= self.vae_random_colour_share < 1:
            raise ValueError(f"--vae_random_colour_share must be in [0, 1), not {self.vae_random_colour_share}")
        if self.text_token_loss_weight < 0:
            raise ValueError(f"--text_token_loss_weight must be 0 (off) or more, not {self.text_token_loss_weight}")
        frozen = self.freeze_text_encoder or (self.pretrains_text_encoder and not self.text_encoder_joint_lr)
        if self.text_token_loss_weight > 0 and frozen:
            raise ValueError("--text_token_loss_weight trains the text encoder with the UNet; it cannot go with "
                             "--freeze_text_encoder, nor with --text_encoder_minutes/steps unless "
                             "--text_encoder_joint_lr is set")
        if self.text_token_loss_span not in SPANS:
            raise ValueError(f"--text_token_loss_span must be one of {SPANS}, not {self.text_token_loss_span!r}")
        if self.text_encoder_objective not in TEXT_OBJECTIVES:
            raise ValueError(f"--text_encoder_objective must be one of {TEXT_OBJECTIVES}, not {self.text_encoder_objective!r}")
        if not 0 <= self.text_encoder_unknown_share < 1:
            raise ValueError(f"--text_encoder_unknown_share must be in [0, 1), not {self.text_encoder_unknown_share}")
        if not 0 <= self.unet_ema_decay < 1:
            raise ValueError(f"--unet_ema_decay must be 0 (off) or in (0, 1), not {self.unet_ema_decay}")
        if self.vae_from and vae_folder(self.vae_from) is None:
            raise ValueError(f"--vae_from {self.vae_from}: no diffusers VAE there (config.json or vae/config.json)")
        if self.named_objects < 0 or not 0 < self.named_object_share < 1:
            raise ValueError(f"--named_objects must be 0 (none) or more and --named_object_share in (0, 1), not "
                             f"{self.named_objects} and {self.named_object_share}")
        if self.text_encoder_pooling not in POOLINGS:
            raise ValueError(f"--text_encoder_pooling must be one of {POOLINGS}, not {self.text_encoder_pooling!r}")


def build_vae(config: PretrainConfig):
    from diffusers import AutoencoderKL
    n = len(config.vae_channels)  # n - 1 halvings: 3 levels make SD's 4-channel latents at 1/4 of the side
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=config.vae_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=1, norm_num_groups=min(32, min(config.vae_channels)), sample_size=64)


def vae_folder(path: str) -> Optional[Path]:
    """The VAE folder of a diffusers pipeline folder, or `path` itself if it is one; None if neither."""
    for folder in (Path(path) / "vae", Path(path)):
        if (folder / "config.json").is_file():
            return folder
    return None


def load_vae(path: str):
    """The VAE of a diffusers pipeline folder, or a VAE folder, in fp32 for training-time encoding."""
    from diffusers import AutoencoderKL
    return AutoencoderKL.from_pretrained(vae_folder(path), torch_dtype=torch.float32).eval()


def build_unet(config: PretrainConfig):
    from diffusers import UNet2DConditionModel
    n = len(config.unet_channels)
    # cross-attention at every resolution: the background covers the whole 16x16 latent
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=config.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        layers_per_block=1, cross_attention_dim=config.text_width, attention_head_dim=config.attention_heads,
        norm_num_groups=32)


def build_text_encoder(config: PretrainConfig):
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=config.text_width, intermediate_size=4 * config.text_width,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77, projection_dim=config.text_width,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))


def build_tokenizer(folder: Path):
    from transformers import CLIPTokenizer
    from ..models.tokenizer import write_clip_tokenizer
    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(folder)))


def build_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler
    # SD 1.x's schedule, so every sampler and trainer treats the base like SD 1.5
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, steps_offset=1, prediction_type=prediction_type)


class StepBudget:
    """A fixed step count, or as many steps as fit in a time budget. The count is estimated from the
    pace so far, every 50 steps until a third of the way (the cosine schedule stretches to match), so a
    slow start or a busy machine does not cut the run short."""

    def __init__(self, steps: int, minutes: float, probe: int = 50):
        self.fixed, self.total, self.seconds, self.probe = bool(steps), steps or None, minutes * 60, probe
        self.started = time.monotonic()

    def length(self) -> int:
        return self.total or 10**9

    def done(self, step: int) -> bool:
        if not self.fixed and step and step % self.probe == 0 and (self.total is None or step < self.total / 3):
            pace = (time.monotonic() - self.started) / step
            self.total = max(step + 1, int(self.seconds / pace))
        return self.total is not None and step >= self.total


def sampling_scheduler(training_scheduler):
    """DPM-Solver on the training schedule: what the folder ships, as SD 1.5 ships PNDM. Pipelines sample
    well with it in 20-25 steps; trainers read the same betas into a DDPMScheduler."""
    from diffusers import DPMSolverMultistepScheduler
    return DPMSolverMultistepScheduler.from_config(training_scheduler.config)


def cosine_lr_budget(optimizer, budget: StepBudget, warmup: int = 100):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup)
                                             * 0.5 * (1 + math.cos(math.pi * min(1.0, s / budget.length()))))


def to_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def cropped_batches(sources, count: int, gen: torch.Generator) -> list[torch.Tensor]:
    """`count` random images of each source, all cut to one random 32x32 crop: the VAE is convolutional,
    so crops teach it as well as whole images, 4x cheaper."""
    batches = [to_pixels(images[torch.randint(len(images), (count,), generator=gen).numpy()]) for images in sources]
    oy, ox = torch.randint(0, 33, (2,), generator=gen).tolist()
    return [x[:, :, oy:oy + 32, ox:ox + 32] for x in batches]


def vae_loss(recon: torch.Tensor, x: torch.Tensor, posterior, kl_weight: float) -> torch.Tensor:
    """MSE + L1 reconstruction plus a small KL term, as the toy world's VAEs train."""
    return F.mse_loss(recon, x) + F.l1_loss(recon, x) + kl_weight * posterior.kl().float().mean()


def train_vae(images: np.ndarray, config: PretrainConfig, log: Log):
    vae = build_vae(config)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0)
    budget = StepBudget(config.vae_steps, config.vae_minutes)
    sched = cosine_lr_budget(opt, budget)
    gen = torch.Generator().manual_seed(config.seed)
    step = 0
    log(f"vae: {cpu_autocast_name()}")
    while not budget.done(step):
        [x] = cropped_batches([images], config.vae_batch_size, gen)
        with cpu_autocast():  # 2.2x faster where the CPU has bf16, 8x slower where it is emulated
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=gen)).sample.float()
        mse = F.mse_loss(recon, x)
        loss = vae_loss(recon, x, posterior, config.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log(f"vae step {step}: mse {mse.item():.5f} (PSNR {10 * math.log10(4 / mse.item()):.1f} dB)")
        step += 1
    log(f"vae: {step} steps, last PSNR {10 * math.log10(4 / mse.item()):.1f} dB")
    return vae.eval().requires_grad_(False), step


def vae_pictures(images: np.ndarray, config: PretrainConfig) -> np.ndarray:
    """The world's images plus random-colour pictures making up `vae_random_colour_share` of the whole."""
    share = config.vae_random_colour_share
    extra = round(len(images) * share / (1 - share))
    return np.concatenate([images, random_colour_images(extra, config.seed)]) if extra else images


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Posterior means of all images, scaled to unit variance; sets the VAE's scaling_factor to match."""
    means = torch.cat([vae.encode(to_pixels(images[i:i + batch])).latent_dist.mean
                       for i in range(0, len(images), batch)])
    scale = 1.0 / means.std().item()
    vae.register_to_config(scaling_factor=scale)
    return means * scale


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def loss_weights(scheduler, timesteps: torch.Tensor, gamma: float, weighting: str, floor: float = 0.0) -> torch.Tensor:
    from ..train.losses import compute_snr, high_noise_weights, min_snr_weights
    snr, kind = compute_snr(scheduler, timesteps), scheduler.config.prediction_type
    if weighting == "min_snr":
        return min_snr_weights(snr, gamma, kind, floor)
    if weighting == "high_noise":
        return high_noise_weights(snr, gamma, kind)
    raise ValueError(f"--loss_weighting must be 'min_snr' or 'high_noise', not {weighting!r}")


class CaptionStates:
    """A frozen text encoder's output states for each distinct caption (the world has a few hundred):
    ~13% faster UNet steps than running the encoder every step."""

    def __init__(self, text_encoder, ids: torch.Tensor, empty_ids: torch.Tensor, bf16: bool):
        distinct, inverse = torch.unique(torch.cat([ids, empty_ids[None]]), dim=0, return_inverse=True)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            self.states = torch.cat([text_encoder(chunk)[0].float() for chunk in distinct.split(256)])
        self.index, self.empty = inverse[:-1], inverse[-1]


class TrainedDenoiser(NamedTuple):
    unet: object
    text_encoder: object
    scheduler: object
    final_loss: float
    steps: int
    last_unet_weights: Optional[dict]  # with --unet_ema_decay: the last weights; `unet` holds their average


def train_denoiser(latents: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor, config: PretrainConfig,
                   log: Log, text_encoder=None):
    """Train a new UNet (and `text_encoder`, or a new one, unless the config freezes it)."""
    from diffusers.models.attention_processor import AttnProcessor
    from ..train.losses import diffusion_target
    unet = build_unet(config)
    if warning := slow_bf16_warning("cpu", config.mixed_precision):
        log(warning)
    text_encoder = build_text_encoder(config) if text_encoder is None else text_encoder
    scheduler = build_scheduler(config.prediction_type)
    unet.set_attn_processor(AttnProcessor())  # plain matmuls beat CPU flash attention at these widths (~1.4x)
    pretrained = config.pretrains_text_encoder
    train_text = not config.freeze_text_encoder and (not pretrained or config.text_encoder_joint_lr > 0)
    text_encoder.requires_grad_(train_text)
    if config.freeze_token_embeddings:
        text_encoder.get_input_embeddings().requires_grad_(False)
    text_params = [p for p in text_encoder.parameters() if p.requires_grad]
    token_loss = None
    if train_text and config.text_token_loss_weight > 0:
        vocabulary = torch.unique(ids)
        token_loss = TokenReconstruction(vocabulary, config.text_width, text_encoder.config.eos_token_id,
                                         config.text_token_loss_span, inverse_document_frequency(ids, vocabulary))
        text_params += list(token_loss.parameters())
    params = list(unet.parameters()) + text_params
    opt = torch.optim.AdamW([{"params": list(unet.parameters())},
                             {"params": text_params, "lr": config.text_encoder_joint_lr if pretrained else config.unet_lr}],
                            lr=config.unet_lr, weight_decay=1e-2)
    # a frozen encoder's states depend on the caption alone: computed once per distinct caption
    cache = None if train_text else CaptionStates(text_encoder, ids, empty_ids, config.mixed_precision == "bf16")
    ema = None
    if config.unet_ema_decay:
        from diffusers.training_utils import EMAModel
        ema = EMAModel(unet.parameters(), decay=config.unet_ema_decay, use_ema_warmup=True)
    budget = StepBudget(config.unet_steps, config.unet_minutes)
    sched = cosine_lr_budget(opt, budget)
    gen = torch.Generator().manual_seed(config.seed + 1)
    losses, token_losses, step = [], [], 0
    while not budget.done(step):
        idx = torch.randint(len(latents), (config.unet_batch_size,), generator=gen)
        x0 = latents[idx]
        dropped = torch.rand(len(idx), generator=gen) < config.caption_dropout
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        with torch.autocast("cpu", torch.bfloat16, enabled=config.mixed_precision == "bf16"):
            if cache is not None:
                states = cache.states[torch.where(dropped, cache.empty, cache.index[idx])]
            else:
                batch_ids = torch.where(dropped[:, None], empty_ids, ids[idx])
                states = text_encoder(batch_ids)[0]
            pred = unet(scheduler.add_noise(x0, noise, t), t, states).sample
        per_sample = F.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t), reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * loss_weights(scheduler, t, config.snr_gamma, config.loss_weighting, config.snr_floor)).mean()
        if token_loss is not None:
            words = token_loss(states, batch_ids)
            loss = loss + config.text_token_loss_weight * words
            token_losses.append(words.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(per_sample.mean().item())
        if step % 100 == 0:
            words = f", word loss {sum(token_losses[-100:]) / len(token_losses[-100:]):.3f}" if token_losses else ""
            log(f"unet step {step}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}{words}")
        step += 1
    final = sum(losses[-200:]) / len(losses[-200:])
    log(f"unet: {step} steps, final loss (mean of the last 200) {final:.4f}")
    unet.set_default_attn_processor()
    last = None
    if ema is not None:
        last = {k: v.clone() for k, v in unet.state_dict().items()}
        ema.copy_to(unet.parameters())
    return TrainedDenoiser(unet.eval(), text_encoder.eval(), scheduler, final, step, last)


def last_unet_path(base: Path) -> Path:
    """Where a base trained with --unet_ema_decay keeps its UNet's last (not averaged) weights."""
    return base.with_name(base.name + "_unet_without_ema")


def pretrain(dest: Path, config: PretrainConfig = PretrainConfig(), log: Log = print) -> dict:
    """Make the toy-world base in `dest` (a diffusers folder, fp16); returns what MADE.md records."""
    import tempfile
    from diffusers import StableDiffusionPipeline
    from ..fsutil import atomic_dir

    started = time.monotonic()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    images, captions, _ = make_dataset(config.num_images, config.seed)
    log(f"world: {len(images)} images in {time.monotonic() - started:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(Path(tmp))
    empty = tokenize(tokenizer, [""])[0]
    named = {}
    if config.named_objects:
        named_images, named_captions, named = add_named_objects(tokenizer, captions, config)
        images, captions = np.concatenate([images, named_images]), captions + named_captions
        log(f"named objects: {len(named_images)} images of {len(named)} designs, called {sorted(named)}")
    if config.vae_from:
        vae, vae_steps = load_vae(config.vae_from), 0
        log(f"vae: reused from {config.vae_from}")
    else:
        vae, vae_steps = train_vae(vae_pictures(images, config), config, log)
    latents = encode_latents(vae, images)
    vae_minutes = (time.monotonic() - started) / 60
    ids = tokenize(tokenizer, captions)
    text_encoder, text = None, {}
    if config.pretrains_text_encoder:
        from .text_pretrain import pretrain_text_encoder
        text_encoder = build_text_encoder(config)
        budget = StepBudget(config.text_encoder_steps, config.text_encoder_minutes)
        if config.text_encoder_objective == "words":
            steps, loss = pretrain_on_words(text_encoder, ids, budget, config.seed + 2, log, lr=config.text_encoder_lr,
                                            unknown_share=config.text_encoder_unknown_share)
        else:
            steps, loss = pretrain_text_encoder(text_encoder, latents, ids, budget, config.seed + 2, log,
                                                lr=config.text_encoder_lr, pooling=config.text_encoder_pooling)
        text = {"text_encoder_steps": steps, "text_encoder_loss": round(loss, 4)}
    unet, text_encoder, scheduler, final_loss, unet_steps, last_unet = train_denoiser(latents, ids, empty, config,
                                                                                      log, text_encoder)
    if config.vae_refit_steps:
        from .vae_refit import refit_vae
        vae = refit_vae(vae, images, steps=config.vae_refit_steps, batch_size=config.vae_batch_size,
                        seed=config.seed, log=log)  # the world already rendered above
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sampling_scheduler(scheduler), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(torch.float16)
    with atomic_dir(Path(dest)) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    if last_unet is not None:  # the UNet's last weights, to compare with the average the base ships
        unet.load_state_dict(last_unet)
        with atomic_dir(last_unet_path(Path(dest))) as tmp:
            unet.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
    return {"config": asdict(config), "minutes": round((time.monotonic() - started) / 60, 1),
            "vae_minutes": round(vae_minutes, 1), "vae_steps": vae_steps,
            "vae_precision": cpu_autocast_name(), "unet_steps": unet_steps,
            "final_loss": round(final_loss, 4), **text, **({"named_objects": named} if named else {})}


def add_named_objects(tokenizer, world_captions: list[str], config: PretrainConfig) -> tuple[np.ndarray, list[str], dict]:
    """The named objects' images and captions (`named_object_share` of all the UNet's), and {name: design}."""
    from .named_objects import make_named_dataset, named_designs, pick_names
    world_words = {w for caption in world_captions for w in caption.split()}
    designs = named_designs(config.named_objects, config.seed)
    names = pick_names(tokenizer, config.named_objects, world_words, config.seed)
    count = round(len(world_captions) * config.named_object_share / (1 - config.named_object_share))
    images, captions = make_named_dataset(designs, names, count, config.seed)
    return images, captions, {name: asdict(d) for name, d in zip(names, designs)}
