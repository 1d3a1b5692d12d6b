"""load_rgb over PIL modes and broken files; list_images over folders and list files."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focusshot.data.images import ImageError, list_images, load_rgb, to_rgb

SRC_DATA = Path(__file__).resolve().parents[2] / "src" / "focusshot" / "data"


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _px(img: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_rgb_and_simple_modes(tmp_path: Path) -> None:
    rgb = Image.new("RGB", (5, 3), (10, 20, 30))
    out = load_rgb(_save(rgb, tmp_path / "rgb.png"))
    assert out.size == (5, 3) and _px(out) == (10, 20, 30)
    assert _px(load_rgb(_save(Image.new("L", (4, 4), 77), tmp_path / "l.png"))) == (77, 77, 77)
    assert _px(load_rgb(_save(Image.new("1", (4, 4), 1), tmp_path / "one.png"))) == (255, 255, 255)
    cmyk = _save(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), tmp_path / "cmyk.jpg", quality=95)
    assert _px(load_rgb(cmyk)) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert _px(load_rgb(_save(pal, tmp_path / "p.png"))) == (200, 100, 50)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    out = load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    assert _px(out, (0, 0)) == (255, 255, 255)
    assert _px(out, (1, 0)) == (255, 0, 0)
    assert all(abs(v - 127) <= 1 for v in _px(out, (2, 0)))
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    out = load_rgb(_save(la, tmp_path / "la.png"))
    assert _px(out, (0, 0)) == (255, 255, 255) and _px(out, (1, 0)) == (0, 0, 0)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([9, 9, 9, 0, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    out = load_rgb(_save(pal, tmp_path / "pt.png", transparency=0))
    assert _px(out, (0, 0)) == (255, 255, 255) and _px(out, (1, 0)) == (0, 0, 0)
    gif = load_rgb(_save(pal, tmp_path / "pt.gif", transparency=0))
    assert _px(gif, (0, 0)) == (255, 255, 255)


def test_high_bit_depth_is_scaled_not_clipped(tmp_path: Path) -> None:
    a16 = np.array([[0, 1000, 128 * 257, 65535]], dtype=np.uint16)
    img16 = Image.open(_save(Image.fromarray(a16), tmp_path / "g16.png"))
    assert img16.mode.startswith("I;16")
    out = load_rgb(tmp_path / "g16.png")
    # 1000 / 257 = 3.9 -> 4; PIL's own convert("RGB") would clip 1000 to 255.
    assert [_px(out, (x, 0))[0] for x in range(4)] == [0, 4, 128, 255]
    as_i = Image.fromarray(a16.astype(np.int32), "I")
    assert [_px(to_rgb(as_i), (x, 0))[0] for x in range(4)] == [0, 4, 128, 255]
    small_i = Image.fromarray(np.array([[0, 200]], dtype=np.int32), "I")
    assert _px(to_rgb(small_i), (1, 0)) == (200, 200, 200)
    tif = load_rgb(_save(as_i, tmp_path / "i.tif"))
    assert _px(tif, (3, 0)) == (255, 255, 255)
    f01 = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32), "F")
    assert [_px(load_rgb(_save(f01, tmp_path / "f.tif")), (x, 0))[0] for x in range(3)] == [0, 64, 255]
    f255 = Image.fromarray(np.array([[3.0, 200.0, 300.0]], dtype=np.float32), "F")
    assert [_px(to_rgb(f255), (x, 0))[0] for x in range(3)] == [3, 200, 255]


def test_undecodable_files_raise_image_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ImageError) as err:
        load_rgb(junk)
    assert isinstance(err.value, ValueError)
    assert err.value.path == junk and "junk.jpg" in str(err.value)
    good = _save(Image.new("RGB", (64, 64), (1, 2, 3)), tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match="truncated.png"):
        load_rgb(truncated)
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "absent.png")
    copy = pickle.loads(pickle.dumps(err.value))
    assert isinstance(copy, ImageError) and copy.path == junk and copy.reason == err.value.reason


def test_exif_orientation_honoured_unless_turned_off(tmp_path: Path) -> None:
    img = Image.new("RGB", (6, 4), (5, 5, 5))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(path).size == (4, 6)
    assert load_rgb(path, exif_transpose=False).size == (6, 4)


def test_list_images_folder_listfile_and_sequence(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for rel in ["b/2.png", "a/10.JPG", "a/9.jpeg", "c/d/x.webp", "top.bmp"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    for rel in ["a/notes.txt", ".hidden/y.png", "a/.z.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    found = list_images(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a/10.JPG",
        "a/9.jpeg",
        "b/2.png",
        "c/d/x.webp",
        "top.bmp",
    ]
    assert list_images(str(root)) == found
    listing = tmp_path / "split.txt"
    listing.write_text(f"# test split\nds/b/2.png\n\n  ds/a/9.jpeg  \n{root / 'top.bmp'}\n", encoding="utf-8")
    assert list_images(listing) == [root / "b/2.png", root / "a/9.jpeg", root / "top.bmp"]
    assert list_images([root / "top.bmp", listing]) == [root / "top.bmp", *list_images(listing)]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


def test_data_layer_imports_no_models() -> None:
    for name in ("images.py", "transforms.py"):
        tree = ast.parse((SRC_DATA / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for mod in mods:
                assert not mod.startswith("focusshot") or mod.startswith("focusshot.data"), (
                    f"{name} imports {mod}"
                )
