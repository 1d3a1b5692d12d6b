"""A corpus of damaged and unusual inputs, generated (never shipped), run through embed, fit,
predict and evaluate: each bad file is named with a reason, each odd-but-valid one is read, and
nothing computed is lost."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focusshot.api import fit
from focusshot.backbones.registry import create_backbone
from focusshot.cli import main
from focusshot.data.images import ImageErrors, load_rgb
from focusshot.embedding import embed_images


def _rgb(size=(20, 16), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _bomb_png() -> bytes:
    """A PNG whose header claims 30000 x 30000 pixels (PIL refuses it as a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0"))
        + _png_chunk(b"IEND", b"")
    )


def make_corpus(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Write the corpus into ``root``; returns ``(good, bad)``: name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    good: dict[str, Path] = {}
    bad: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        good[name] = root / name
        img.save(good[name], **kw)

    save("cmyk.jpg", _rgb(seed=1).convert("CMYK"))
    save("sixteen_bit.png", Image.fromarray((np.arange(320).reshape(16, 20) * 200).astype(np.uint16)))
    save("one_bit.png", _rgb(seed=2).convert("1"))
    pal = _rgb(seed=3).convert("P")
    pal.info["transparency"] = 0
    save("palette_transparent.png", pal)
    save("rgba.png", _rgb(seed=4).convert("RGBA"))
    save("la.png", _rgb(seed=5).convert("LA"))
    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("exif_rotated.jpg", _rgb((24, 12), seed=6), exif=exif)
    frames = [_rgb(seed=7), _rgb(seed=8)]
    good["animated.gif"] = root / "animated.gif"
    frames[0].save(good["animated.gif"], save_all=True, append_images=frames[1:], duration=50)
    save("non_ascii_é漢.png", _rgb(seed=9))
    save("grey.jpg", _rgb(seed=10).convert("L"))
    try:  # a file name that is not valid UTF-8 (Linux file systems allow any bytes)
        raw = os.fsencode(root) + b"/latin1_\xe9.png"
        with open(raw, "wb") as f:
            _rgb(seed=11).save(f, format="PNG")
        good["latin1"] = Path(os.fsdecode(raw))
    except (OSError, UnicodeError):
        pass

    whole_jpg = io.BytesIO()
    _rgb(seed=12).save(whole_jpg, format="JPEG")
    whole_png = io.BytesIO()
    _rgb(seed=13).save(whole_png, format="PNG")
    for name, data in {
        "truncated.jpg": whole_jpg.getvalue()[:60],
        "truncated.png": whole_png.getvalue()[:50],
        "zero_bytes.png": b"",
        "text.jpg": b"this is a text file, not a JPEG\n",
        "bomb.png": _bomb_png(),
    }.items():
        bad[name] = root / name
        bad[name].write_bytes(data)
    bad["dangling.png"] = root / "dangling.png"
    bad["dangling.png"].symlink_to(root / "does_not_exist.png")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads any file: no permission case then
        bad["no_permission.png"] = root / "no_permission.png"
        _rgb(seed=14).save(bad["no_permission.png"])
        bad["no_permission.png"].chmod(0)
    return good, bad


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    return make_corpus(tmp_path / "corpus")


def test_every_odd_but_valid_image_is_read_as_rgb(corpus) -> None:
    good, _ = corpus
    for name, path in good.items():
        img = load_rgb(path)
        assert img.mode == "RGB" and img.size[0] >= 1, name
    # animated GIF: the first frame; EXIF orientation honoured when asked
    with Image.open(good["animated.gif"]) as gif:
        first = np.asarray(gif.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(good["animated.gif"])), first)
    assert load_rgb(good["exif_rotated.jpg"]).size == (12, 24)  # shown rotated, read rotated
    assert load_rgb(good["exif_rotated.jpg"], exif_transpose=False).size == (24, 12)


def test_embed_reads_the_good_and_names_every_bad_file(corpus) -> None:
    good, bad = corpus
    model = create_backbone("tiny-vit")
    paths = sorted([*good.values(), *bad.values()], key=str)
    emb = embed_images(model, paths)
    assert sorted(emb.paths) == sorted(str(p) for p in good.values())
    assert emb.features.shape[0] == len(good)
    named = {Path(e.path).name for e in emb.bad}
    assert named == set(bad), named ^ set(bad)
    assert all(e.reason for e in emb.bad)


def test_fit_names_all_bad_files_or_skips_them_and_predict_carries_on(corpus, tmp_path, capsys) -> None:
    good, bad = corpus
    support = tmp_path / "support"
    for c, names in enumerate((list(good)[:6], list(good)[6:])):
        folder = support / f"class_{c}"
        folder.mkdir(parents=True)
        for n in names:
            (folder / good[n].name).write_bytes(good[n].read_bytes())
    for n, p in bad.items():  # the bad ones into class_0, links kept as links
        target = support / "class_0" / n
        if p.is_symlink():
            target.symlink_to(os.readlink(p))
        else:
            target.write_bytes(p.read_bytes())
    with pytest.raises(ImageErrors) as info:
        fit(support, backbone="tiny-vit")
    assert {e.path.name for e in info.value.errors} == set(bad)
    clf = fit(support, backbone="tiny-vit", skip_bad=True)
    assert clf.info["fitted_on"]["images"] == len(good)
    path = clf.save(tmp_path / "clf.safetensors")
    out = tmp_path / "preds.csv"
    rc = main(["predict", str(path), str(support), "--output", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "truncated.jpg" in err and "bomb.png" in err  # named, and the run went on
    lines = out.read_text(errors="surrogateescape").splitlines()
    assert len(lines) == 1 + len(good)
    if "latin1" in good:  # a non-UTF-8 name comes back as its own bytes
        assert any(os.fsencode(line.split(",")[0]).endswith(b"latin1_\xe9.png") for line in lines[1:])


def test_damaged_datasets_manifests_and_classifiers_fail_naming_what_to_fix(
    tmp_path, monkeypatch, capsys
) -> None:
    import json

    from tests.evaluation.test_protocols import _write_dataset

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    root = _write_dataset(tmp_path / "data", classes=3, per_class=3)
    img = sorted((root / "class_0").iterdir())[0]
    out = str(tmp_path / "c.safetensors")

    def fit_rc(data) -> tuple[int, str]:
        rc = main(["fit", str(data), "--backbone", "tiny-vit", "--output", out, "--quiet"])
        return rc, capsys.readouterr().err

    (root / "class_empty").mkdir()
    rc, err = fit_rc(root)
    assert rc == 2 and "class_empty" in err and "no images" in err
    (root / "class_empty").rmdir()
    (root / "class_1" / "folder.png").mkdir()  # a folder named like an image is not an image
    assert fit_rc(root)[0] == 0
    manifest = tmp_path / "m.csv"
    manifest.write_text("\ufeffpath,label\r\n" + f"{img},cat\r\n{tmp_path / 'missing.png'},dog\r\n")
    rc, err = fit_rc(manifest)
    assert rc == 2 and "line 3" in err and "missing.png" in err  # BOM and CRLF read; the missing file named
    manifest.write_text(f"path,label\n{img},\n")
    rc, err = fit_rc(manifest)
    assert rc == 2 and "line 2" in err and "empty label" in err
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [["gone.png", 0, "a"]], "val": [], "test": [["gone.png", 0, "a"]]}))
    rc, err = fit_rc(split)
    assert rc == 2 and "split 'train', entry 0" in err and "gone.png" in err
    rc = main(
        [
            "evaluate",
            "--backbone",
            "tiny-vit",
            "--data",
            str(root),
            "--method",
            "protonet",
            "--ways",
            "3",
            "--shots",
            "5",
            "--episodes",
            "2",
            "--output",
            str(tmp_path / "ev"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "class_0': 3" in err  # a class with fewer images than shots + queries, named
    assert fit_rc(root)[0] == 0
    data = Path(out).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    rc = main(["predict", str(tmp_path / "cut.safetensors"), str(root), "--output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "cut.safetensors" in err and "not a readable classifier" in err
