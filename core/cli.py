"""The `dreambooth` command line: argparse only here; every flag maps onto a config field."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Optional

from .config import (ClassImagesConfig, GenerateConfig, TrainConfig, config_from_dict, load_config_file)
from .errors import ConfigError, DreamBoothError
from .events import StopFlag


def _base_type(hint):
    """Optional[int] -> int; list[str] -> (list, str)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _base_type(args[0])
    if typing.get_origin(hint) is list:
        return (list, typing.get_args(hint)[0])
    return hint


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field, named as the field; defaults are left to the dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _base_type(hints[f.name])
        kw = {"help": f.metadata.get("help", ""), "default": argparse.SUPPRESS, "dest": f.name}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(kind, tuple):
            kw.update(nargs="+", type=kind[1])
        else:
            kw["type"] = kind
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(f"--{f.name}", **kw)


def config_from_args(cls, args: argparse.Namespace):
    """Config-file values first, then the flags given on the command line."""
    values = load_config_file(args.config) if getattr(args, "config", None) else {}
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return config_from_dict(cls, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreambooth", description="DreamBooth fine-tuning for Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cls, text in (("train", TrainConfig, "Fine-tune a model on your subject."),
                            ("generate", GenerateConfig, "Draw images with a trained model."),
                            ("class-images", ClassImagesConfig, "Generate class images for prior preservation.")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", help="A .toml or .json file of options (flags given here override it).")
        add_config_arguments(p, cls)
    p = sub.add_parser("demo", help="Run the whole job on a built-in default (no model needed).")
    p.add_argument("--output_dir", default="dreambooth-demo", help="Where the demo writes everything.")
    p.add_argument("--max_train_steps", type=int, default=None, help="Override the demo's number of steps.")
    p = sub.add_parser("make-tiny-model", help="Build a tiny random-weight SD model folder offline (for tests).")
    p.add_argument("dest", help="Folder to create.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=("sd1", "sdxl"), default="sd1", help="SD 1.x or SDXL structure.")
    p = sub.add_parser("convert", help="Convert a model: diffusers folder <-> single .safetensors file (A1111/ComfyUI).",
                       description="SRC a diffusers folder (or a trained output folder) and DEST a .safetensors file "
                                   "writes the single file in the original (LDM) layout; SRC a .safetensors file "
                                   "and DEST a folder writes a diffusers folder.")
    p.add_argument("src", help="A diffusers folder, a training output folder, or a single-file checkpoint.")
    p.add_argument("dest", help="A .safetensors file to write, or a folder for a diffusers model.")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16", help="Precision of a written single file.")
    p.add_argument("--allow_pickle_checkpoints", action="store_true",
                   help="Allow a .ckpt/.pt/.bin SRC (pickle files can run code when loaded).")
    sub.add_parser("plan", help="Predict the peak memory of a training configuration (dreambooth plan -h).")
    p = sub.add_parser("worker", help="Run a saved job file, streaming events as JSON lines (for UIs).")
    p.add_argument("job_file", help="A job file written by sksbooth.config.save_job_file.")
    add_evaluate_parser(sub)
    sub.add_parser("toyworld-pretrain", help="Remake the toy-world base and checker (about 40 min on 2 CPU cores; "
                                             "dreambooth toyworld-pretrain -h).")
    return parser


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="Score a trained model with the DreamBooth paper's metrics: DINO, CLIP-I, "
                                        "CLIP-T, PRES and DIV (needs local DINO and CLIP weights).")
    p.add_argument("output_dir", help="The --output_dir of a finished `dreambooth train`.")
    p.add_argument("--dino_model", required=True, help="A local DINO/DINOv2 transformers folder (e.g. facebook/dino-vits16).")
    p.add_argument("--clip_model", required=True, help="A local CLIP transformers folder (e.g. openai/clip-vit-base-patch32).")
    p.add_argument("--num_images", type=int, default=4, help="Images per prompt.")
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else list(argv)
    # Idle OpenMP threads sleep instead of spinning: several times faster when the CPU is shared
    # (effective only before torch is imported, which is why it is set this early). Pretraining the
    # toy world is a long job that owns the CPU, and its small ops ran 1.7x faster with spinning threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE" if argv[:1] == ["toyworld-pretrain"] else "PASSIVE")
    if argv[:1] == ["plan"]:  # its own parser: --arch plus every train flag, none required
        from .plan import main as plan_main
        return plan_main(argv[1:])
    if argv[:1] == ["toyworld-pretrain"]:  # its own parser, built from PretrainConfig
        from .toyworld.make import main as toyworld_main
        return toyworld_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except DreamBoothError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def check_launcher_environment() -> None:
    """`accelerate launch --cpu --num_processes N` starts one process only (accelerate issue #2741).

    Its single-process launcher still exports MASTER_ADDR when N > 1, but no WORLD_SIZE.
    Training alone when N were asked for would silently be N times slower.
    """
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if use_cpu and os.environ.get("MASTER_ADDR") and not os.environ.get("WORLD_SIZE"):
        raise ConfigError(
            "accelerate launch --cpu starts a single process even with --num_processes > 1. "
            "For DDP on CPU run: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N "
            "-m sksbooth.cli train ...")


def cmd_train(args) -> int:
    check_launcher_environment()
    config = config_from_args(TrainConfig, args)  # validate before importing the heavy stack
    from .progress import TqdmProgress
    from .train.loop import train
    with StopFlag(config.stop_file).handling_signals() as stop, TqdmProgress() as progress:
        result = train(config, callbacks=[progress], stop=stop)
    if os.environ.get("RANK", "0") != "0":
        return 130 if result.stopped else 0  # the main process reports
    if result.stopped:
        print(f"Stopped at step {result.global_step}; checkpoint saved in {result.last_checkpoint}.\n"
              f"Resume with the same command plus --resume_from_checkpoint latest.")
        return 130
    print(f"Model: {result.model_path}\nLoss plot: {result.output_dir / 'loss.png'}")
    from .models.single_file import trained_single_file_path
    single = trained_single_file_path(config)
    if not config.use_lora and config.save_single_file and single.is_file():
        from .models.hashing import file_sha256, model_title
        print(f"Single file (A1111 models/Stable-diffusion, ComfyUI models/checkpoints): "
              f"{single} - shown there as {model_title(single, file_sha256(single))}")
    if config.validation_prompts:
        print(f"Samples: {result.output_dir / 'samples'}")
    return 0


def cmd_generate(args) -> int:
    from .generate import generate
    from .progress import TqdmProgress
    with TqdmProgress() as progress:
        paths = generate(config_from_args(GenerateConfig, args), callbacks=[progress])
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_class_images(args) -> int:
    from .class_images import generate_class_images
    from .progress import TqdmProgress
    config = config_from_args(ClassImagesConfig, args)
    with StopFlag().handling_signals() as stop, TqdmProgress() as progress:
        folder = generate_class_images(config, callbacks=[progress], stop=stop)
    print(f"{len(folder.images)} class images in {folder.folder}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.output_dir, max_train_steps=args.max_train_steps)


def cmd_make_tiny_model(args) -> int:
    from .models.tiny import make_tiny_model
    print(make_tiny_model(args.dest, seed=args.seed, arch=args.arch))
    return 0


def cmd_convert(args) -> int:
    from pathlib import Path
    from .models.hashing import model_title
    from .models.load import check_model_path
    from .models.single_file import diffusers_folder_to_single_file, single_file_to_diffusers
    src = Path(args.src).expanduser()
    if (src / "model" / "model_index.json").is_file():
        src = src / "model"  # one of our training outputs
    src = check_model_path(str(src), allow_pickle=args.allow_pickle_checkpoints)
    if src.is_file():
        if args.dest.lower().endswith(".safetensors"):
            raise ConfigError("SRC is already a single file; give a folder as DEST to get a diffusers model.")
        print(single_file_to_diffusers(src, args.dest, args.allow_pickle_checkpoints))
        return 0
    if not args.dest.lower().endswith(".safetensors"):
        raise ConfigError(f"DEST {args.dest!r} must end in .safetensors (a diffusers folder is converted to a single file).")
    path, sha = diffusers_folder_to_single_file(src, args.dest, args.precision)
    print(f"{model_title(path, sha)}  sha256 {sha}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate.run import EvaluateConfig, evaluate
    scores = evaluate(EvaluateConfig(args.output_dir, args.dino_model, args.clip_model, num_images=args.num_images,
                                     num_inference_steps=args.num_inference_steps,
                                     guidance_scale=args.guidance_scale, seed=args.seed))
    print("  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return 0


def cmd_worker(args) -> int:
    from .jobs.worker import run_worker
    return run_worker(args.job_file)


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "class-images": cmd_class_images, "demo": cmd_demo,
            "make-tiny-model": cmd_make_tiny_model, "worker": cmd_worker, "convert": cmd_convert,
            "evaluate": cmd_evaluate}

if __name__ == "__main__":
    sys.exit(main())
