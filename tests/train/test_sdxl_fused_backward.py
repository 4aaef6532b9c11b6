"""--fused_backward_pass: the optimizer steps inside the backward pass, so a full SDXL fine-tune never holds
all its gradients at once. Same weights as the ordinary loop, resumable; and the planner's SDXL targets."""

from __future__ import annotations

import pytest
import torch

from sksbooth.config import TrainConfig
from sksbooth.errors import ConfigError
from sksbooth.events import StopFlag
from sksbooth.train.loop import train


def config(model, instance_dir, out, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(instance_dir),
                instance_prompt="a photo of sks dog", output_dir=str(out), resolution=64, train_batch_size=1,
                max_train_steps=4, checkpointing_steps=1000, learning_rate=1e-3, lr_warmup_steps=0, seed=3,
                max_grad_norm=0.0, train_text_encoder=True)
    base.update(kw)
    return TrainConfig(**base)


def weights(model_path):
    from sksbooth.models.load import load_components
    parts = load_components(str(model_path))
    return {f"{part}.{k}": v for part in ("unet", "text_encoder")
            for k, v in getattr(parts, part).state_dict().items()}


def test_each_weight_is_updated_inside_backward_and_its_gradient_freed():
    import copy
    from sksbooth.train.fused import fuse_optimizer_into_backward
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    reference = copy.deepcopy(model)
    fused_opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.1)
    fuse_optimizer_into_backward(fused_opt, list(model.parameters()))
    x = torch.randn(5, 4)
    for _ in range(3):
        model(x).square().mean().backward()  # the update happens here
        assert all(p.grad is None for p in model.parameters())
        reference(x).square().mean().backward()
        ref_opt.step()
        ref_opt.zero_grad()
        for a, b in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_fused_backward_gives_the_ordinary_updates_and_resumes(tiny_model, instance_dir, tmp_path):
    plain = weights(train(config(tiny_model, instance_dir, tmp_path / "plain")).model_path)
    stop = StopFlag()
    stop_at_2 = lambda e: stop.request("test") if e.kind == "step" and e.step == 2 else None  # noqa: E731
    train(config(tiny_model, instance_dir, tmp_path / "fused", fused_backward_pass=True), [stop_at_2], stop)
    resumed = train(config(tiny_model, instance_dir, tmp_path / "fused", fused_backward_pass=True,
                           resume_from_checkpoint="latest"))
    assert resumed.global_step == 4
    fused = weights(resumed.model_path)
    base = weights(tiny_model)
    assert any(not torch.equal(fused[k], base[k]) for k in base)  # it trained
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=0, atol=2e-6, msg=name)


def test_fused_backward_refuses_what_needs_all_gradients_at_once(tiny_model, instance_dir, tmp_path):
    with pytest.raises(ConfigError, match="gradient_accumulation_steps 1"):
        config(tiny_model, instance_dir, tmp_path, fused_backward_pass=True, gradient_accumulation_steps=2)
    with pytest.raises(ConfigError, match="fp16"):
        config(tiny_model, instance_dir, tmp_path, fused_backward_pass=True, mixed_precision="fp16")


GB = 2 ** 30


def sdxl_plan(**kw):
    from sksbooth.plan import plan_memory
    cfg = TrainConfig(pretrained_model_name_or_path="sdxl", instance_data_dir="x", instance_prompt="a photo of sks dog",
                      with_prior_preservation=True, class_prompt="a photo of dog", resolution=1024,
                      train_batch_size=1, **kw)
    return plan_memory(cfg, "sdxl")


def test_planner_sdxl_targets_full_dreambooth_in_24gb_and_lora_in_12gb():
    savers = dict(gradient_checkpointing=True, mixed_precision="bf16", optimizer="adafactor")
    full = sdxl_plan(**savers)
    fused = sdxl_plan(fused_backward_pass=True, **savers)
    lora = sdxl_plan(use_lora=True, gradient_checkpointing=True, mixed_precision="bf16")
    print(f"SDXL 1024 px, batch 1 + prior: full {full.peak / GB:.2f} GB, full fused {fused.peak / GB:.2f} GB, "
          f"LoRA {lora.peak / GB:.2f} GB")
    assert fused.peak < full.peak
    assert fused.peak <= 24 * GB  # the targets on a 24 GB GPU
    assert lora.peak <= 12 * GB
