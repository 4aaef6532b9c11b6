"""The paper's metrics (arXiv 2208.12242) as functions of features."""

from __future__ import annotations

import pytest
import torch

from sksbooth.evaluate.metrics import div, pres, prompt_fidelity, subject_fidelity


def test_subject_fidelity_and_pres_measure_closeness_to_the_real_subject():
    torch.manual_seed(0)
    real = torch.randn(5, 16)
    near = real[torch.arange(8) % 5] + 0.1 * torch.randn(8, 16)
    far = torch.randn(8, 16)
    assert subject_fidelity(near, real) > subject_fidelity(far, real) + 0.1
    assert subject_fidelity(real[:1], real[:1]) == pytest.approx(1.0)
    assert pres(near, real) > pres(far, real)  # a class collapsed onto the subject scores high


def test_div_is_zero_for_copies_and_grows_with_spread():
    torch.manual_seed(0)
    one = torch.randn(1, 16)
    assert div(one.repeat(6, 1)) == pytest.approx(0.0, abs=1e-6)
    tight = one + 0.05 * torch.randn(6, 16)
    assert div(torch.randn(6, 16)) > div(tight) > 0
    assert div(torch.eye(4)) == pytest.approx(1.0)  # orthogonal pairs: distance 1
    with pytest.raises(ValueError):
        div(one)


def test_prompt_fidelity_pairs_each_image_with_its_own_prompt():
    texts = torch.eye(3)
    assert prompt_fidelity(texts.clone(), texts) == pytest.approx(1.0)
    assert prompt_fidelity(texts.roll(1, 0), texts) == pytest.approx(0.0)
