"""make_transform against Hugging Face's PIL CLIP image processor, and its own rules."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from focusshot.data.images import load_rgb, to_rgb
from focusshot.data.transforms import (
    INTERPOLATIONS,
    VIEW_MIN_VISIBLE,
    AugmentTransform,
    PreprocessLike,
    ViewGeometry,
    box_to_view,
    center_crop,
    make_transform,
    normalize,
    resize_shorter,
    to_tensor,
)

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


def _view_as_drawn_before(t: AugmentTransform, img: Image.Image) -> tuple[torch.Tensor, tuple, bool]:
    """An augmented view made step by step in the order the draws have always had: the crop box
    (``t.box``), the resize, then the flip coin: ``(tensor, crop box, flipped)``."""
    rgb = to_rgb(img)
    g = t._generator(rgb)
    box = t.box(rgb.width, rgb.height, g)
    crop = rgb.crop(box).resize((t.base.crop, t.base.crop), INTERPOLATIONS[t.base.interpolation])
    flipped = float(torch.rand(1, generator=g)) < 0.5
    if flipped:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return normalize(to_tensor(crop), t.base.mean, t.base.std), box, flipped


@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_view_geometry_is_what_the_view_cuts_out(mode: str) -> None:
    img = _random_image(45, 60, mode, 4)
    flips = set()
    for seed in (0, 3):
        for view in range(1, 9):
            t = AugmentTransform(CLIP, view, seed)
            expected, box, flipped = _view_as_drawn_before(t, img)
            assert torch.equal(t(img), expected), (seed, view)  # same draws, same order, same pixels
            assert t.geometry(img) == ViewGeometry(box, flipped, (60, 45))
            flips.add(flipped)
    assert flips == {True, False}  # both branches compared
    with pytest.raises(TypeError, match="PIL"):
        AugmentTransform(CLIP, 1).geometry(np.zeros((4, 4, 3), dtype=np.uint8))  # type: ignore[arg-type]


def _red_box_image(box: tuple[int, int, int, int]) -> Image.Image:
    """An 80x60 grey image with a red rectangle over ``box`` (pixels ``x0..x1-1``, ``y0..y1-1``)."""
    arr = np.full((60, 80, 3), 128, dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = (255, 0, 0)
    return Image.fromarray(arr, "RGB")


def test_box_in_a_view_covers_the_boxed_pixels_of_the_view() -> None:
    box = (10, 15, 34, 40)  # left of centre: a flip moves it to the right
    img = _red_box_image(box)
    pre = SimpleNamespace(resize=32, crop=32, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")
    checked = {True: 0, False: 0}
    for view in range(1, 13):
        t = AugmentTransform(pre, view, seed=0)
        geo = t.geometry(img)
        mapped = box_to_view(box, geo)
        x = t(img)  # (3, 32, 32) in [0, 1]
        red = (x[0] - x[1]) > 0.5  # at least half red: inside the box, or half over its edge
        if mapped is None:
            continue
        rows, cols = red.any(dim=1).nonzero().flatten(), red.any(dim=0).nonzero().flatten()
        assert rows.numel() and cols.numel(), (view, geo)
        seen = (cols.min() / 32, rows.min() / 32, (cols.max() + 1) / 32, (rows.max() + 1) / 32)
        # the mapped box and the red pixels' bounding box agree to within a pixel (resampling)
        assert seen == pytest.approx(mapped, abs=1.5 / 32), (view, geo, seen, mapped)
        checked[geo.flipped] += 1
    assert checked[True] and checked[False], checked


def test_box_to_view_clips_mirrors_and_gives_up_on_what_the_view_hides() -> None:
    geo = ViewGeometry((20, 10, 60, 50), False, (100, 80))  # a 40x40 crop of a 100x80 image
    assert box_to_view((30, 20, 40, 30), geo) == pytest.approx((0.25, 0.25, 0.5, 0.5))
    flipped = ViewGeometry((20, 10, 60, 50), True, (100, 80))
    assert box_to_view((30, 20, 40, 30), flipped) == pytest.approx((0.5, 0.25, 0.75, 0.5))
    # half the box inside the crop: clipped to it
    assert box_to_view((50, 20, 70, 30), geo) == pytest.approx((0.75, 0.25, 1.0, 0.5))
    # a fifth of the box inside (< VIEW_MIN_VISIBLE), or none of it: the view does not show it
    assert VIEW_MIN_VISIBLE > 0.2
    assert box_to_view((56, 20, 76, 30), geo) is None
    assert box_to_view((56, 20, 76, 30), geo, min_visible=0.2) == pytest.approx((0.9, 0.25, 1.0, 0.5))
    assert box_to_view((70, 20, 90, 30), geo, min_visible=0.0) is None
    # the share is of the box's part inside the image
    assert box_to_view((50, 20, 150, 30), geo) is None  # 10 of 50 visible pixels wide
    assert box_to_view((55, 20, 200, 30), geo, min_visible=0.1) == pytest.approx((0.875, 0.25, 1.0, 0.5))
    with pytest.raises(ValueError, match="empty or reversed"):
        box_to_view((40, 20, 30, 30), geo)
    with pytest.raises(ValueError, match="outside the 100x80 image"):
        box_to_view((120, 20, 130, 30), geo)
    with pytest.raises(ValueError, match="min_visible"):
        box_to_view((30, 20, 40, 30), geo, min_visible=1.5)
