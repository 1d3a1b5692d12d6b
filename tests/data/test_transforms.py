"""make_transform against Hugging Face's PIL CLIP image processor, and its own rules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from focusshot.data.images import load_rgb
from focusshot.data.transforms import PreprocessLike, center_crop, make_transform, resize_shorter

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP = SimpleNamespace(resize=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")
IMAGENET = SimpleNamespace(
    resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear"
)
# (height, width): square, landscape, portrait, already 224 on one side, small (upsampled), and
# (640, 227) whose resized long side 631 leaves 407 = 3 (mod 4) pixels to crop.
SIZES = [(224, 224), (300, 451), (451, 300), (224, 301), (100, 80), (227, 300), (640, 227)]


def _hf(preprocess: SimpleNamespace):
    pil_clip = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    from transformers.image_utils import PILImageResampling

    resample = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}
    return pil_clip.CLIPImageProcessorPil(
        size={"shortest_edge": preprocess.resize},
        crop_size={"height": preprocess.crop, "width": preprocess.crop},
        image_mean=list(preprocess.mean),
        image_std=list(preprocess.std),
        resample=resample[preprocess.interpolation],
    )


def _random_image(h: int, w: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth content plus noise, so resampling filters matter.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / max(w - 1, 1)), (yy * 255 / max(h - 1, 1)), ((xx + yy) % 64) * 4], -1)
    arr = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        img = img.copy()
        img.putalpha(alpha)
    elif mode != "RGB":
        img = img.convert(mode)
    return img


@pytest.mark.parametrize(
    ("preprocess", "mode"),
    [(CLIP, "RGB"), (CLIP, "L"), (CLIP, "RGBA"), (CLIP, "P"), (IMAGENET, "RGB")],
    ids=["clip-RGB", "clip-L", "clip-RGBA", "clip-P", "imagenet-bilinear-RGB"],
)
def test_matches_hugging_face_processor(preprocess: SimpleNamespace, mode: str) -> None:
    hf = _hf(preprocess)
    ours = make_transform(preprocess, crop_rounding="floor")
    sizes = SIZES if mode == "RGB" else [(300, 451), (100, 80), (640, 227)]
    for i, (h, w) in enumerate(sizes):
        img = _random_image(h, w, mode, seed=i)
        x = ours(img)
        ref = torch.from_numpy(np.asarray(hf(img)["pixel_values"][0]))
        assert x.shape == ref.shape == (3, preprocess.crop, preprocess.crop) and x.dtype == torch.float32
        torch.testing.assert_close(x, ref.float(), rtol=0, atol=1e-5, msg=f"size {(h, w)}, mode {mode}")


def test_torchvision_rounding_differs_only_when_excess_is_3_mod_4() -> None:
    hf = _hf(CLIP)
    rounded, floored = make_transform(CLIP), make_transform(CLIP, crop_rounding="floor")
    for i, (h, w) in enumerate(SIZES):
        img = _random_image(h, w, "RGB", seed=i)
        resized = resize_shorter(img, 224, "bicubic")
        excess = max(resized.size) - 224
        same = torch.allclose(rounded(img), floored(img))
        assert same == (excess % 4 != 3), (h, w, excess)
        if excess % 4 != 3:
            ref = torch.from_numpy(np.asarray(hf(img)["pixel_values"][0]))
            torch.testing.assert_close(rounded(img), ref.float(), rtol=0, atol=1e-5)
    # torchvision's rule on the odd case: top = int(round(407 / 2.0)) = 204 (half to even), HF's = 203.
    tall = resize_shorter(_random_image(640, 227, "RGB", 0), 224)
    assert tall.size == (224, 631)
    arr = np.asarray(tall)
    assert np.array_equal(np.asarray(center_crop(tall, 224, "round")), arr[204 : 204 + 224])
    assert np.array_equal(np.asarray(center_crop(tall, 224, "floor")), arr[203 : 203 + 224])


def test_duck_typed_settings_and_validation() -> None:
    from focusshot.backbones.base import CLIP_PREPROCESS  # a caller's object; data/ never imports it

    assert isinstance(CLIP_PREPROCESS, PreprocessLike)
    a = make_transform(CLIP_PREPROCESS)(_random_image(50, 70, "RGB", 3))
    b = make_transform(CLIP)(_random_image(50, 70, "RGB", 3))
    torch.testing.assert_close(a, b)
    assert make_transform(CLIP).to_dict()["crop_rounding"] == "round"
    with pytest.raises(TypeError, match="interpolation"):
        make_transform(SimpleNamespace(resize=1, crop=1, mean=(0,) * 3, std=(1,) * 3))
    with pytest.raises(ValueError, match="bicubic, bilinear"):
        make_transform(SimpleNamespace(resize=8, crop=8, mean=(0,) * 3, std=(1,) * 3, interpolation="cubic"))
    with pytest.raises(ValueError, match="crop_rounding"):
        make_transform(CLIP, crop_rounding="ceil")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PIL"):
        make_transform(CLIP)(np.zeros((4, 4, 3), dtype=np.uint8))


def test_crop_larger_than_image_pads_with_black() -> None:
    pre = SimpleNamespace(resize=16, crop=20, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")
    x = make_transform(pre)(Image.new("RGB", (32, 16), (255, 255, 255)))
    assert x.shape == (3, 20, 20)
    assert x[:, 0, :].abs().max() == 0 and x[:, :, 0].max() == 1.0  # rows 0-1 padded; all columns are image
    assert x[:, 2:18, :].min() == 1.0


def test_values_scale_and_normalise(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    Image.new("RGB", (40, 30), (255, 0, 51)).save(path)
    pre = SimpleNamespace(
        resize=24, crop=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.1), interpolation="bicubic"
    )
    x = make_transform(pre)(load_rgb(path))
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (0.0 - 0.5) / 0.25, (0.2 - 0.5) / 0.1]).view(3, 1, 1)
    torch.testing.assert_close(x, expected.expand(3, 24, 24), rtol=0, atol=1e-5)
