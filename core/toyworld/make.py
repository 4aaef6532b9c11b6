"""`dreambooth toyworld-pretrain DEST` (or `python -m sksbooth.toyworld.make DEST`): train the world's checker and pretrain the toy-world base
into DEST (checker.safetensors, base/ and MADE.md, which records how they were made)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..fsutil import atomic_write_text
from .checker import accuracy, save_checker, train_checker
from .pretrain import PretrainConfig, pretrain


def parse(argv) -> tuple[Path, PretrainConfig, dict]:
    p = argparse.ArgumentParser(prog="dreambooth toyworld-pretrain", description=__doc__)
    p.add_argument("dest", type=Path)
    p.add_argument("--checker_steps", type=int, default=1200, help="0 keeps the checker already in DEST")
    p.add_argument("--checker_lookalike_share", type=float, default=0.25,
                   help="the share of the checker's training images that are objects in colours outside the "
                        "palette, labelled by shape, so that it calls only the subject the subject")
    p.add_argument("--checker_nothing_share", type=float, default=0.15,
                   help="the share of the checker's training images that show no world object (bands, bare "
                        "grounds, colour noise, smears, clutter), so that it can say so of a failed generation")
    p.add_argument("--checker_only", action="store_true",
                   help="train the checker into DEST (checker.safetensors, checker.json) and stop")
    for f in dataclasses.fields(PretrainConfig):
        kind = type(f.default)
        if kind is tuple:
            p.add_argument(f"--{f.name}", type=lambda v: tuple(int(c) for c in v.split(",")), default=f.default)
        elif kind is bool:  # type=bool would read "False" as True
            p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(f"--{f.name}", type=kind, default=f.default)
    args = vars(p.parse_args(argv))
    dest, checker_only = args.pop("dest"), args.pop("checker_only")
    checker = {"steps": args.pop("checker_steps"), "lookalike_share": args.pop("checker_lookalike_share"),
               "nothing_share": args.pop("checker_nothing_share")}
    shares = (checker["lookalike_share"], checker["nothing_share"])
    if min(shares) < 0 or sum(shares) > 0.5:  # the rest are world images and the subject
        p.error(f"--checker_lookalike_share and --checker_nothing_share must be at least 0 and add up to at most "
                f"0.5, not {shares[0]} + {shares[1]}")
    if checker_only and not checker["steps"]:
        p.error("--checker_only needs --checker_steps above 0")
    checker["only"] = checker_only
    try:
        return dest, PretrainConfig(**args), checker
    except ValueError as e:  # an option the config refuses: argparse's usage line and exit code 2
        p.error(str(e))


def main(argv=None) -> int:
    dest, config, checker_options = parse(argv)
    started = time.monotonic()
    log = lambda s: print(f"[{(time.monotonic() - started) / 60:5.1f} min] {s}", flush=True)  # noqa: E731
    command = "dreambooth toyworld-pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
    only = checker_options.pop("only")
    if checker_options["steps"]:  # the judge first: it is not part of the base's time
        make_checker(dest, command, config.seed, checker_options, log)
    if only:
        return 0
    made = pretrain(dest / "base", config, log)
    made["command"] = command
    if (dest / "checker.safetensors").is_file():
        made["base_scores"] = score_base_model(dest)
    atomic_write_text(dest / "made.json", json.dumps(made, indent=1))
    atomic_write_text(dest / "MADE.md", made_md(made))
    log(f"done: {made}")
    return 0


def make_checker(dest: Path, command: str, seed: int, options: dict, log) -> dict:
    """Train the judge into DEST and record how (checker.json): its accuracy on fresh world images, on
    look-alikes and on pictures of no world object, each degraded like a small model's output."""
    started = time.monotonic()
    checker = train_checker(seed=seed, **options)
    save_checker(checker, dest)
    made = {"command": command, "seed": seed, **options, "minutes": round((time.monotonic() - started) / 60, 1),
            "accuracy": {name: {k: round(v, 4) for k, v in accuracy(checker, **shares).items()} for name, shares in
                         (("world", {}), ("lookalikes_0.3", {"lookalike_share": 0.3}),
                          ("nothing_0.3", {"nothing_share": 0.3}))}}
    atomic_write_text(dest / "checker.json", json.dumps(made, indent=1))
    log(f"checker: {made['accuracy']}")
    return made


def score_base_model(dest: Path, count: int = 96) -> dict:
    """The base's asked shape / colour / background rates (guidance 7.5, 20 DPM-Solver steps, seed 0)."""
    from .assets import load_pipeline
    from .checker import load_checker
    from .quality import score_base
    return score_base(load_pipeline(dest / "base"), load_checker(dest), count=count, seed=0)


def text_encoder_note(made: dict) -> str:
    from .text_pretrain import CAPTIONS_PER_BATCH
    c = made["config"]
    then = (f"trained with the UNet at lr {c['text_encoder_joint_lr']}" if c.get("text_encoder_joint_lr")
            else "frozen")
    if "text_encoder_steps" in made and c.get("text_encoder_objective") == "words":
        unknown = c.get("text_encoder_unknown_share", 0.0)
        return (f", text encoder pretrained first on the captions alone ({made['text_encoder_steps']} steps, each"
                f" state naming every caption word up to it, lr {c['text_encoder_lr']}, final word loss"
                f" {made['text_encoder_loss']}" + (f", {unknown:.0%} of captions with an unknown token to name"
                                                   if unknown else "") + f"), then {then}")
    if "text_encoder_steps" in made:
        return (f", text encoder pretrained first CLIP-style ({made['text_encoder_steps']} steps of {CAPTIONS_PER_BATCH}"
                f" captions against a latent image encoder, caption vector: "
                f"{'the end-of-text state' if c.get('text_encoder_pooling') == 'eos' else 'the mean state'},"
                f" lr {c['text_encoder_lr']}, final contrastive loss"
                f" {made['text_encoder_loss']}), then {then}")
    if c.get("freeze_text_encoder"):
        return ", text encoder frozen (random, as built)"
    if c.get("text_token_loss_weight"):
        named = "every caption word up to it" if c.get("text_token_loss_span") == "prefix" else "its own caption word"
        return (f", text encoder also trained so that each state names {named} (word loss weight"
                f" {c['text_token_loss_weight']}, sksbooth.toyworld.token_loss)")
    return ", token embeddings frozen (random)" if c.get("freeze_token_embeddings") else ""


def vae_note(c: dict) -> str:
    share, refit = c.get("vae_random_colour_share", 0.0), c.get("vae_refit_steps", 0)
    note = f", {share:.0%} of its pictures flat shapes in random RGB colours" if share else ", world images only"
    return note + (f"; after the UNet, refit for {refit} steps on world and random-colour pictures, its world"
                   f" latents kept where the UNet learned them" if refit else "")


def vae_line(made: dict) -> str:
    c = made["config"]
    if c.get("vae_from"):
        return f"VAE: reused from {c['vae_from']} (not trained here; latents rescaled to unit variance)"
    return (f"VAE (channels {c.get('vae_channels')}): {made['vae_steps']} steps of {c['vae_batch_size']} 32x32 crops"
            f" ({made.get('vae_precision', 'bf16 autocast')}){vae_note(c)}")


def ema_note(c: dict) -> str:
    decay = c.get("unet_ema_decay", 0.0)
    return f", the UNet's weights averaged (EMA decay {decay}, with warm-up)" if decay else ""


def named_objects_line(made: dict) -> str:
    named = made.get("named_objects")
    if not named:
        return ""
    share = made["config"]["named_object_share"]
    return (f"\n- named objects (sksbooth.toyworld.named_objects): {share:.0%} of the UNet's images show one of"
            f" {len(named)} fixed looks of the world's classes, called by a word the world never uses"
            f" ({', '.join(sorted(named))}: \"a photo of a {sorted(named)[0]} {named[sorted(named)[0]]['shape']}\");"
            f" the text encoder learned those words as it learned the world's; \"sks\" is never one of them")


def made_md(made: dict) -> str:
    c, s = made["config"], made.get("base_scores") or {"shape": float("nan"), "colour": float("nan"),
                                                            "background": float("nan")}
    return f"""# The toy-world base: how it was made

A Stable Diffusion pipeline (diffusers AutoencoderKL, UNet2DConditionModel, CLIPTextModel with the real
CLIP BPE tokenizer, DDPMScheduler with SD 1.x's schedule), pretrained from scratch on CPU on the
procedural toy world (`sksbooth.toyworld.world`), saved in fp16. `checker.safetensors` is the world's
judge (`sksbooth.toyworld.checker`).

- command: `{made['command']}`
- seed: {c['seed']}; {c['num_images']} world images
- time: {made['minutes']} min in all ({made['vae_minutes']} min world + VAE + latent cache), on 2 CPU cores
- {vae_line(made)}
- UNet + text encoder: {made['unet_steps']} steps of {c['unet_batch_size']}, lr {c['unet_lr']} cosine,
  caption dropout {c['caption_dropout']}, {c.get('prediction_type', 'epsilon')}, loss weighting
  {c.get('loss_weighting', 'min_snr')} (gamma {c['snr_gamma']}, floor {c.get('snr_floor', 0.0)}),
  {'bf16 autocast' if c.get('mixed_precision') == 'bf16' else 'fp32'}{ema_note(c)}{text_encoder_note(made)}{named_objects_line(made)}
- final loss (mean of the last 200 steps): {made['final_loss']}

Base on 96 full captions ("a photo of a <colour> <shape> on a <colour> background"; seed 0,
guidance 7.5, 20 DPM-Solver steps), judged by the checker: asked shape {s['shape']:.0%},
colour {s['colour']:.0%}, background {s['background']:.0%} (chance: 25%, 20%, 20%).
"""


if __name__ == "__main__":
    raise SystemExit(main())
