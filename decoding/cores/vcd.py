"""VCD's distorted image: forward-diffusion noise at step ``noise_step`` of 1000.

Paper: Leng et al., CVPR 2024, arXiv 2311.16922, Sec. 3 ("visual uncertainty").
Official code: ``DAMO-NLP-SG/VCD`` commit ``d6568ff8``, ``vcd_utils/vcd_add_noise.py:3-28``.

Rule: 1000 betas ``sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5``,
``abar_t = prod_{s<=t} (1 - beta_s)``, and the distorted image is
``sqrt(abar_t) * x + sqrt(1 - abar_t) * eps`` with ``eps ~ N(0, I)``, applied to the
CLIP-normalised pixel tensor (after the image processor). Default ``t = 500``
(``experiments/cd_scripts/llava1.5_pope.bash:7``): ``0.863 x + 0.505 eps``.

Deviation: the official code draws ``eps`` from the global RNG (``torch.randn_like``), so
the distortion depends on everything drawn before. Here ``eps`` comes from a dedicated
CPU generator seeded with ``noise_seed``: ``torch.randn(shape, generator=
torch.Generator("cpu").manual_seed(noise_seed), dtype=torch.float32)``, then cast to the
pixel dtype/device. The served path must draw it the same way so both see the same image.
"""

from __future__ import annotations

import torch

NUM_STEPS = 1000


def noise_schedule(num_steps: int = NUM_STEPS) -> torch.Tensor:
    """``abar_t`` for ``t = 0..num_steps-1`` (float64)."""
    betas = torch.sigmoid(torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64))
    betas = betas * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1.0 - betas, dim=0)


def noise_coefficients(noise_step: int) -> tuple[float, float]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` for step ``noise_step`` in ``0..999``."""
    if not 0 <= noise_step < NUM_STEPS:
        raise ValueError(f"noise_step must be in 0..{NUM_STEPS - 1}, got {noise_step}")
    abar = float(noise_schedule()[noise_step])
    return abar**0.5, (1.0 - abar) ** 0.5


def diffusion_noise(shape: tuple[int, ...], noise_seed: int) -> torch.Tensor:
    """The request's ``eps``: float32 standard normal from a CPU generator."""
    gen = torch.Generator("cpu").manual_seed(noise_seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def add_diffusion_noise(pixels: torch.Tensor, noise_step: int, noise_seed: int) -> torch.Tensor:
    """Distort normalised ``pixels`` (any shape) as VCD does; deterministic per seed."""
    keep, mix = noise_coefficients(noise_step)
    eps = diffusion_noise(tuple(pixels.shape), noise_seed)
    out = keep * pixels.detach().to("cpu", torch.float32) + mix * eps
    return out.to(device=pixels.device, dtype=pixels.dtype)
