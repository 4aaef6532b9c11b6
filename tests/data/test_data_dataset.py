"""The DreamBoothDataset and its collate function, on real image folders."""

from __future__ import annotations

import torch
from PIL import Image

from sksbooth.data.dataset import DreamBoothDataset, collate
from sksbooth.data.images import scan_image_folder
from sksbooth.data.transforms import to_tensor

RES = 16


def class_dir(tmp_path, n=5):
    folder = tmp_path / "class"
    folder.mkdir()
    for k in range(n):
        Image.new("RGB", (24, 24), (200, 10 * k, 10)).save(folder / f"class_{k:05d}.png")
    return folder


def test_instance_items_with_captions(instance_dir):
    (instance_dir / "subject_1.txt").write_text("sks dog in the snow")
    ds = DreamBoothDataset(scan_image_folder(instance_dir, "instance"), "a photo of sks dog", RES,
                           center_crop=True)
    assert len(ds) == 3
    prompts = [ds[i]["instance_prompt"] for i in range(3)]
    assert prompts == ["a photo of sks dog", "sks dog in the snow", "a photo of sks dog"]
    item = ds[0]
    assert set(item) == {"instance_pixels", "instance_prompt", "instance_time_ids"}
    assert item["instance_pixels"].shape == (3, RES, RES)
    assert item["instance_pixels"].min() >= -1 and item["instance_pixels"].max() <= 1


def test_length_and_pairing_with_class_images(tmp_path, instance_dir):
    ds = DreamBoothDataset(scan_image_folder(instance_dir, "instance"), "a photo of sks dog", RES,
                           center_crop=True, class_folder=scan_image_folder(class_dir(tmp_path), "class"),
                           class_prompt="a photo of dog")
    assert len(ds) == 5  # max(3 instance, 5 class): an epoch sees every class image
    for i in range(5):
        item = ds[i]
        assert item["class_prompt"] == "a photo of dog"
        expected_class = Image.open(tmp_path / "class" / f"class_{i:05d}.png").resize((RES, RES))
        assert torch.allclose(item["class_pixels"], to_tensor(expected_class), atol=0.02)
    # instance images cycle
    assert torch.equal(ds[3]["instance_pixels"], ds[0]["instance_pixels"])


def test_collate_puts_instance_first_then_class(tmp_path, instance_dir):
    (instance_dir / "subject_2.txt").write_text("caption two")
    ds = DreamBoothDataset(scan_image_folder(instance_dir, "instance"), "a photo of sks dog", RES,
                           center_crop=False, random_flip=True, seed=3,
                           class_folder=scan_image_folder(class_dir(tmp_path), "class"),
                           class_prompt="a photo of dog")
    items = [ds[i] for i in (0, 1, 2)]
    batch = collate(items)
    assert batch["pixel_values"].shape == (6, 3, RES, RES)
    assert batch["pixel_values"].is_contiguous()
    assert batch["num_instance"] == 3
    for j, it in enumerate(items):
        assert torch.equal(batch["pixel_values"][j], it["instance_pixels"])
        assert torch.equal(batch["pixel_values"][3 + j], it["class_pixels"])
    assert batch["prompts"] == ["a photo of sks dog", "a photo of sks dog", "caption two",
                                "a photo of dog", "a photo of dog", "a photo of dog"]
    # instance halves really are instance images (blue background), class halves red
    blue, red = batch["pixel_values"][:3, 2].mean(), batch["pixel_values"][3:, 0].mean()
    assert blue > 0 and red > 0.4


def test_collate_without_class_images(instance_dir):
    ds = DreamBoothDataset(scan_image_folder(instance_dir, "instance"), "a photo of sks dog", RES)
    batch = collate([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, RES, RES)
    assert batch["prompts"] == ["a photo of sks dog"] * 2 and batch["num_instance"] == 2


def test_items_are_reproducible_for_a_seed_and_epoch(instance_dir):
    folder = scan_image_folder(instance_dir, "instance")
    a = DreamBoothDataset(folder, "p", RES, center_crop=False, random_flip=True, seed=5)
    b = DreamBoothDataset(folder, "p", RES, center_crop=False, random_flip=True, seed=5)
    assert all(torch.equal(a[i]["instance_pixels"], b[i]["instance_pixels"]) for i in range(3))


def test_caption_dropout_empties_about_that_share_of_captions_and_leaves_the_images(tmp_path, instance_dir):
    classes = class_dir(tmp_path, 40)

    def dataset(rate):
        return DreamBoothDataset(scan_image_folder(instance_dir, "instance"), "a photo of sks dog", RES,
                                 random_flip=True, seed=1, class_folder=scan_image_folder(classes, "class"),
                                 class_prompt="a photo of dog", caption_dropout_rate=rate)
    plain, dropped = dataset(0.0), dataset(0.25)
    items = [dropped[i] for i in range(len(dropped))]
    empty = sum(item[f"{kind}_prompt"] == "" for item in items for kind in ("instance", "class"))
    assert 8 <= empty <= 32  # 80 captions at 0.25: 20 expected
    assert all(item[f"{kind}_prompt"] in ("", expected) for item in items
               for kind, expected in (("instance", "a photo of sks dog"), ("class", "a photo of dog")))
    assert all(plain[i]["class_prompt"] == "a photo of dog" for i in range(len(plain)))
    # the same flips and crops with or without dropout
    assert all(torch.equal(plain[i]["instance_pixels"], items[i]["instance_pixels"]) for i in range(len(plain)))


def test_captioned_class_images_keep_their_captions(tmp_path, instance_dir):
    # kohya-style captioned regularisation images: the prior is trained on what each caption says
    folder = class_dir(tmp_path, n=3)
    (folder / "class_00001.txt").write_text("a photo of dog on a beach")
    ds = DreamBoothDataset(scan_image_folder(instance_dir, "instance"), "a photo of sks dog", RES,
                           class_folder=scan_image_folder(folder, "class"), class_prompt="a photo of dog")
    assert [ds[i]["class_prompt"] for i in range(3)] == ["a photo of dog", "a photo of dog on a beach",
                                                         "a photo of dog"]
    assert collate([ds[1]])["prompts"] == ["a photo of sks dog", "a photo of dog on a beach"]
