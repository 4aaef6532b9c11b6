"""The paper's metrics as pure functions of feature vectors (any image-feature space: DINO, CLIP, or
the toy world's checker). Rows are images (or texts); features need not be normalised."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Average cosine similarity over all pairs (a_i, b_j)."""
    return (F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T).mean().item()


def subject_fidelity(generated: torch.Tensor, real: torch.Tensor) -> float:
    """DINO / CLIP-I: average pairwise similarity of subject-prompt generations to the real subject images."""
    return mean_pairwise_cosine(generated, real)


def prompt_fidelity(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """CLIP-T: average similarity of each generation to the text of its own prompt (rows paired)."""
    return F.cosine_similarity(image_features.float(), text_features.float(), dim=-1).mean().item()


def pres(class_generations: torch.Tensor, real_subject: torch.Tensor) -> float:
    """PRES (prior preservation): average pairwise similarity of class-prompt generations to the real
    subject images; high means the class collapsed toward the subject (language drift)."""
    return mean_pairwise_cosine(class_generations, real_subject)


def div(generations: torch.Tensor) -> float:
    """DIV: average pairwise distance (1 - cosine) between generations of the same prompt, each pair
    once; higher is more diverse. The paper measures it with LPIPS; any image-feature space works."""
    n = generations.shape[0]
    if n < 2:
        raise ValueError("DIV needs at least two generations of the same prompt.")
    f = F.normalize(generations.float(), dim=-1)
    sims = f @ f.T
    off_diagonal = sims[~torch.eye(n, dtype=torch.bool)]
    return (1 - off_diagonal).mean().item()
