"""Memory savers that move modules off the accelerator: offloading frozen parts, and a CPU-held EMA."""

from __future__ import annotations

import contextlib

import torch


def offload(module) -> None:
    """Move a frozen module to CPU memory and give its accelerator memory back."""
    module.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def on_device(modules, device):
    """Borrow offloaded modules on `device` (e.g. for validation samples), then put them back."""
    homes = [next(m.parameters()).device for m in modules]
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m, home in zip(modules, homes):
            m.to(home)
        if any(h.type == "cpu" for h in homes) and torch.cuda.is_available():
            torch.cuda.empty_cache()


class CpuEMA:
    """An exponential moving average of the UNet's weights, held in CPU memory (diffusers' EMAModel).

    The shadow weights never occupy the accelerator: each update copies the trained weights to CPU.
    The final model is saved with the EMA weights; validation samples use the raw ones.
    """

    def __init__(self, unet, decay: float):
        from diffusers.training_utils import EMAModel
        self.ema = EMAModel(self._cpu(unet), decay=decay, model_cls=type(unet), model_config=unet.config)

    @staticmethod
    def _cpu(unet) -> list[torch.Tensor]:
        # EMAModel averages only tensors that require grad (it copies the others): keep the flag.
        return [p.detach().to("cpu").requires_grad_(p.requires_grad) for p in unet.parameters()]

    def step(self, unet) -> None:
        self.ema.step(self._cpu(unet))

    def copy_to(self, unet) -> None:
        self.ema.copy_to(unet.parameters())

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
