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


# --- `dreambooth evaluate` on a trained output folder, with tiny random DINO and CLIP stand-ins ---

import json  # noqa: E402
import shutil  # noqa: E402

from PIL import Image  # noqa: E402

from sksbooth.cli import main as cli_main  # noqa: E402
from sksbooth.evaluate.features import ClipFeatures, DinoFeatures  # noqa: E402


@pytest.fixture(scope="module")
def feature_models(tmp_path_factory):
    """Tiny random Dinov2Model and CLIPModel folders (with the real CLIP tokenizer), saved like a download."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, Dinov2Config, Dinov2Model
    from sksbooth.models.tokenizer import write_clip_tokenizer
    root = tmp_path_factory.mktemp("features")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                             image_size=28, patch_size=14)).save_pretrained(root / "dino")
    clip = CLIPModel(CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16))
    clip.save_pretrained(root / "clip")
    CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(root / "tok"))).save_pretrained(root / "clip")
    return root / "dino", root / "clip"


def square(colour, size=48) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def test_feature_extractors_separate_images_and_texts(feature_models):
    dino, clip = DinoFeatures(feature_models[0]), ClipFeatures(feature_models[1])
    images = [square((200, 30, 30)), square((200, 30, 30)), square((30, 30, 200))]
    for features in (dino.images(images), clip.images(images)):
        assert features.shape[0] == 3
        assert torch.allclose(features[0], features[1], atol=1e-5) and not torch.allclose(features[0], features[2])
    texts = clip.texts(["a photo of sks dog", "a photo of sks dog", "a photo of a cat in the snow"])
    assert torch.allclose(texts[0], texts[1]) and not torch.allclose(texts[0], texts[2])


def test_evaluate_a_training_output(tiny_model, instance_dir, feature_models, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_model, out / "model")  # stands for a finished training's model
    (out / "dreambooth_config.json").write_text(json.dumps({
        "instance_data_dir": str(instance_dir), "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of dog", "resolution": 64}))
    dino, clip = feature_models
    assert cli_main(["evaluate", str(out), "--dino_model", str(dino), "--clip_model", str(clip),
                     "--num_images", "2", "--num_inference_steps", "2"]) == 0
    saved = json.loads((out / "evaluation.json").read_text())
    scores = saved["scores"]
    assert set(scores) == {"DINO", "CLIP-I", "CLIP-T", "PRES", "DIV"}
    assert all(-1 <= scores[k] <= 1 for k in ("DINO", "CLIP-I", "CLIP-T", "PRES")) and 0 <= scores["DIV"] <= 2
    assert saved["prompts"][0] == "a photo of sks dog" and len(saved["prompts"]) == 4
    assert "DINO" in capsys.readouterr().out


def test_evaluate_explains_bad_input(tiny_model, feature_models, tmp_path, capsys):
    dino, clip = feature_models
    assert cli_main(["evaluate", str(tmp_path), "--dino_model", str(dino), "--clip_model", str(clip)]) == 2
    assert "not a training output folder" in capsys.readouterr().err
    out = tmp_path / "run"
    shutil.copytree(tiny_model, out / "model")
    (out / "dreambooth_config.json").write_text(json.dumps({"instance_data_dir": str(tmp_path), "instance_prompt": "x",
                                                            "class_prompt": "y"}))
    assert cli_main(["evaluate", str(out), "--dino_model", str(tmp_path / "nope"), "--clip_model", str(clip)]) == 2
    assert "--dino_model" in capsys.readouterr().err
