"""The optimizer step fused into the backward pass (kohya's --fused_backward_pass; PyTorch's tutorial
"How to save memory by fusing the optimizer step into the backward pass").

Each trained parameter is updated as soon as its gradient is complete, and the gradient is freed
right away, so the gradients of the whole model never exist at once: for a full SDXL UNet that is
~10 GB (fp32) less at the peak. The update rule and the optimizer state are the ordinary ones
(one optimizer, its state saved and resumed as usual); what is lost is what needs every gradient
at once: global gradient-norm clipping, gradient accumulation, and fp16 loss scaling.
"""

from __future__ import annotations

import torch


def fuse_optimizer_into_backward(optimizer: torch.optim.Optimizer, params) -> list:
    """Register a hook per parameter that steps `optimizer` for that parameter alone; returns the handles.

    The optimizer's step is run with its parameter groups narrowed to the one parameter, so the
    unchanged optimizer code (AdamW, Adafactor, 8-bit AdamW) does the update and keeps its state.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the real one
    owner = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}

    def step_one(param: torch.Tensor) -> None:
        saved = [group["params"] for group in optimizer.param_groups]
        try:
            for i, group in enumerate(optimizer.param_groups):
                group["params"] = [param] if owner[id(param)] == i else []
            optimizer.step()
        finally:
            for group, group_params in zip(optimizer.param_groups, saved):
                group["params"] = group_params
        param.grad = None

    return [p.register_post_accumulate_grad_hook(step_one) for p in params if p.requires_grad]


def check_fused_backward(accelerator) -> None:
    """Several processes average gradients after backward; updates made inside it would differ per rank."""
    from ..errors import ConfigError
    if accelerator.num_processes > 1:
        raise ConfigError("--fused_backward_pass works in a single process: with several, each would update "
                          "its weights before the gradients are averaged. Drop it, or train on one device.")
