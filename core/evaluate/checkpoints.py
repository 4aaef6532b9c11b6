"""Scoring checkpoints during training (--checkpoint_metric): every checkpoint's weights draw the
subject and class prompts, get the paper's metrics, and the scores go to
OUTPUT_DIR/checkpoint_scores.jsonl; with --keep_best_model the best one so far by the chosen metric
is saved in OUTPUT_DIR/best-model (a diffusers pipeline, or a LoRA run's LoRA file).

Two families: DINO / CLIP-I / CLIP-T / PRES / DIV with local DINO and CLIP weights
(--metric_dino_model, --metric_clip_model), or the toy world's checker (toy_*), for the shipped
toy-world base.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..events import emit
from ..fsutil import atomic_dir, atomic_write_text

HIGHER_IS_BETTER = {"DINO": True, "CLIP-I": True, "CLIP-T": True, "PRES": False, "DIV": True,
                    "toy_subject": True, "toy_fidelity": True, "toy_background": True, "toy_pres": False,
                    "toy_div": True}
TOY_KEYS = {"toy_subject": "subject_recognised", "toy_fidelity": "subject_fidelity",
            "toy_background": "prompt_fidelity", "toy_pres": "pres", "toy_div": "div"}
SCORES_FILE = "checkpoint_scores.jsonl"


def score_pipeline(pipe, config) -> dict[str, float]:
    """All metrics of the chosen metric's family for `pipe`, on fixed seeds."""
    if config.checkpoint_metric in TOY_KEYS:
        from ..toyworld.assets import load_shipped_checker
        from ..toyworld.quality import judge, score_dreambooth
        from ..toyworld.report import load_images
        checker = load_shipped_checker()
        scores = score_dreambooth(pipe, checker, load_images(Path(config.instance_data_dir)),
                                  per_prompt=config.metric_num_images, instance_prompt=config.instance_prompt,
                                  class_prompt=config.class_prompt)
        return {name: scores[key] for name, key in TOY_KEYS.items()}
    from .features import ClipFeatures, DinoFeatures
    from .run import CONTEXTS, EvaluateConfig, real_images, score
    ev = EvaluateConfig(config.output_dir, config.metric_dino_model, config.metric_clip_model,
                        num_images=config.metric_num_images, seed=config.seed or 0)
    return score(pipe, real_images(config.instance_data_dir), [config.instance_prompt + c for c in CONTEXTS],
                 config.class_prompt, DinoFeatures(ev.dino_model), ClipFeatures(ev.clip_model), ev, config.resolution)


def read_scores(out: Path) -> list[dict]:
    path = out / SCORES_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line] if path.is_file() else []


def best_entry(entries: list[dict], metric: str) -> dict:
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return max(entries, key=lambda e: (sign * e["scores"][metric], -e["step"]))  # ties: the earlier step


def save_best(pipe, session, folder: Path) -> None:
    """A full fine-tune's best weights as a diffusers pipeline; a LoRA run's as its LoRA file (and identifier
    embeddings) with the run's config beside it (which names the base), as the run's own output:
    `generate --model best-model` loads either."""
    if not session.config.use_lora:
        pipe.save_pretrained(folder, safe_serialization=True)
        return
    from ..train.checkpoint import write_run_config
    from ..train.save import save_identifier_embeddings, save_lora
    save_lora(pipe.unet, pipe.text_encoder, session.config, folder, session.global_step)
    if session.config.train_text_encoder_ti:  # the identifier's vectors, which the LoRA file does not hold
        save_identifier_embeddings(session.parts, (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)),
                                   session.config, folder)
    write_run_config(folder, session.config)


@torch.no_grad()
def score_checkpoint(session, callbacks) -> dict:
    """Score the session's current weights; record them and keep the best model if asked."""
    from ..models.pipeline import make_scheduler, pipeline_from_parts
    from ..train.report import append_jsonl
    config, unwrap = session.config, session.accelerator.unwrap_model
    unet, text_encoder = unwrap(session.unet), unwrap(session.text_encoder)
    pipe = pipeline_from_parts(session.parts, unet, text_encoder,
                               make_scheduler(config.validation_scheduler, session.parts.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    modes = [(m, m.training) for m in (unet, text_encoder)]
    for m, _ in modes:
        m.eval()
    try:
        scores = score_pipeline(pipe, config)
    finally:
        for m, mode in modes:
            m.train(mode)
    entry = {"step": session.global_step, "checkpoint": str(session.last_checkpoint), "scores": scores}
    append_jsonl(session.out / SCORES_FILE, entry)
    best = best_entry(read_scores(session.out), config.checkpoint_metric)
    if config.keep_best_model and best["step"] == session.global_step:
        with atomic_dir(session.out / "best-model") as tmp:
            save_best(pipe, session, Path(tmp))
            atomic_write_text(Path(tmp) / "score.json", json.dumps({**entry, "metric": config.checkpoint_metric}))
    emit(callbacks, "score", session.global_step, session.max_steps, scores=scores,
         metric=config.checkpoint_metric, best_step=best["step"], best=best["scores"][config.checkpoint_metric])
    return entry
