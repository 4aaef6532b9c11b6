"""Aspect-ratio bucketing: buckets by area, images keep their shape, one bucket per batch, exact resume;
SDXL's crop conditioning describes the crop actually taken."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from sksbooth.data.buckets import BucketBatchSampler, assign_buckets, bucket_sizes, nearest_bucket


@pytest.mark.parametrize("resolution,step", [(512, 64), (1024, 64), (64, 16)])
def test_buckets_have_about_the_training_area_and_sides_in_steps(resolution, step):
    sizes = bucket_sizes(resolution, step)
    area = resolution * resolution
    assert (resolution, resolution) in sizes
    for w, h in sizes:
        assert w % step == 0 and h % step == 0 and w * h <= area
        assert (w + step) * h > area and w * (h + step) > area  # as large as the shape allows
        assert max(w / h, h / w) <= 4
        assert (h, w) in sizes  # portrait and landscape alike
    if resolution == 1024:  # SDXL's well-known buckets
        assert {(832, 1216), (1216, 832), (896, 1152), (768, 1344)} <= set(sizes)


def test_an_image_goes_to_the_bucket_nearest_its_shape():
    sizes = bucket_sizes(512, 64)
    assert nearest_bucket((1920, 1080), sizes) == (640, 384)  # 16:9 -> 5:3
    assert nearest_bucket((1080, 1920), sizes) == (384, 640)
    assert nearest_bucket((500, 490), sizes) == (512, 512)


def draw(path: Path, size) -> Path:
    im = Image.new("RGB", size, (30, 30, 200))
    ImageDraw.Draw(im).ellipse((5, 5, size[0] - 5, size[1] - 5), fill=(240, 200, 20))
    im.save(path)
    return path


@pytest.fixture
def mixed_dir(tmp_path) -> Path:
    """Two wide, two tall and one square subject photo."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, size in enumerate([(160, 96), (150, 90), (96, 160), (90, 150), (100, 100)]):
        draw(folder / f"subject_{i}.png", size)
    return folder


def test_bucketed_items_keep_the_shape_and_record_size_and_crop(mixed_dir):
    from sksbooth.data.dataset import DreamBoothDataset
    from sksbooth.data.images import scan_image_folder
    folder = scan_image_folder(mixed_dir, "instance")
    sizes = assign_buckets(folder.images, 64, 16)
    assert sizes == [(80, 48), (80, 48), (48, 80), (48, 80), (64, 64)]
    class_dir = mixed_dir.parent / "class"
    class_dir.mkdir()
    for j in range(3):  # square samples, as the base model draws them
        draw(class_dir / f"class_{j}.png", (64, 64))
    ds = DreamBoothDataset(folder, "a photo of sks dog", 64, center_crop=False, random_flip=True,
                           class_folder=scan_image_folder(class_dir, "class"), class_prompt="a photo of dog",
                           sizes=sizes)
    for index in range(len(ds)):
        item = ds[index]
        w, h = sizes[index]
        assert item["instance_pixels"].shape == item["class_pixels"].shape == (3, h, w)  # the pair shares a bucket
        assert item["class_time_ids"].tolist()[:2] == [64, 64] and item["class_time_ids"].tolist()[4:] == [h, w]
        orig_h, orig_w, top, left, target_h, target_w = item["instance_time_ids"].tolist()
        with Image.open(folder.images[index]) as im:
            assert (orig_w, orig_h) == im.size
        assert (target_h, target_w) == (h, w)
        scale = max(w / orig_w, h / orig_h)  # the crop lies inside the covering resize
        assert 0 <= top <= round(orig_h * scale) - h and 0 <= left <= round(orig_w * scale) - w


def test_crop_conditioning_matches_the_pixels_cropped_and_flipped():
    """The time ids' crop corner, applied to the resized photo (flipped as the sample was), gives the sample."""
    from sksbooth.data.transforms import cover_size, prepare_with_time_ids, to_tensor
    photo = Image.effect_noise((120, 70), 60).convert("RGB")
    for seed in range(12):
        pixels, ids = prepare_with_time_ids(photo, 48, 48, False, True, random.Random(seed))
        _, _, top, left, h, w = (int(v) for v in ids.tolist())
        resized = photo.resize(cover_size(photo.size, 48, 48), Image.Resampling.BICUBIC)
        for candidate in (resized, resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
            if torch.equal(to_tensor(candidate.crop((left, top, left + w, top + h))), pixels):
                break
        else:
            pytest.fail(f"seed {seed}: the recorded crop {top, left} is not the crop taken")


def test_batches_hold_one_bucket_and_cover_every_item_once_per_epoch():
    buckets = [(80, 48)] * 5 + [(48, 80)] * 3 + [(64, 64)] * 4
    sampler = BucketBatchSampler(buckets, batch_size=2, seed=7)
    orders = []
    for epoch in (0, 1, 0):
        sampler.use_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 3 + 2 + 2
        assert sorted(i for b in batches for i in b) == list(range(len(buckets)))
        assert all(len({buckets[i] for i in b}) == 1 for b in batches)
        orders.append(batches)
    assert orders[0] == orders[2] and orders[0] != orders[1]  # (seed, epoch) alone decides


def bucketed_sdxl_config(model, instance_dir, out, **kw):
    from sksbooth.config import TrainConfig
    base = dict(pretrained_model_name_or_path=str(model), instance_data_dir=str(instance_dir),
                instance_prompt="a photo of sks dog", output_dir=str(out), resolution=64, train_batch_size=2,
                max_train_steps=6, checkpointing_steps=1000, learning_rate=1e-3, lr_warmup_steps=0, seed=3,
                aspect_ratio_bucketing=True, bucket_reso_steps=16, random_flip=True,
                with_prior_preservation=True, class_prompt="a photo of dog", num_class_images=2,
                class_data_dir=str(Path(out).parent / "class"))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    from sksbooth.models.tiny import make_tiny_model
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", arch="sdxl")


def test_bucketed_sdxl_training_with_prior_preservation_resumes_exactly(tiny_sdxl, mixed_dir, tmp_path):
    """Wide, tall and square photos with square class images, both SDXL text encoders trained: every batch
    stacks (one bucket), the latent cache holds each class image at each bucket it is paired with, and a
    resumed run replays the same batches to the same weights."""
    from sksbooth.events import StopFlag
    from sksbooth.models.load import load_components
    from sksbooth.train.loop import train
    kw = dict(train_text_encoder=True, max_train_steps=4)
    straight = train(bucketed_sdxl_config(tiny_sdxl, mixed_dir, tmp_path / "straight", **kw))
    stop = StopFlag()
    stop_at_2 = lambda e: stop.request("test") if e.kind == "step" and e.step == 2 else None  # noqa: E731
    train(bucketed_sdxl_config(tiny_sdxl, mixed_dir, tmp_path / "resumed", **kw), [stop_at_2], stop)
    resumed = train(bucketed_sdxl_config(tiny_sdxl, mixed_dir, tmp_path / "resumed", resume_from_checkpoint="latest",
                                         **kw))
    assert resumed.global_step == 4
    a, b = load_components(str(straight.model_path)), load_components(str(resumed.model_path))
    base = load_components(str(tiny_sdxl))
    for part in ("unet", "text_encoder", "text_encoder_2"):
        sa, sb, s0 = (getattr(x, part).state_dict() for x in (a, b, base))
        for name in sa:
            torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=1e-6, msg=f"{part}.{name}")
        assert any(not torch.equal(sa[k], s0[k]) for k in sa), f"{part} was not trained"
    history = [json.loads(line) for line in (tmp_path / "straight" / "loss_history.jsonl").read_text().splitlines()]
    assert len(history) == 4 and all(h["prior_loss"] > 0 for h in history)
