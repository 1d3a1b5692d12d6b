"""The ``focusshot`` command line. Nothing but argument handling lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import focusshot


def _cmd_backbones(args: argparse.Namespace) -> int:
    from focusshot.backbones.registry import list_backbones

    rows = [
        (s.name, s.family, s.hf_repo or ("package" if s.local_pretrained else "random only"), s.description)
        for s in list_backbones()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from focusshot.backbones.registry import create_backbone
    from focusshot.data.images import list_images
    from focusshot.embedding import embed_images, save_embeddings

    paths = list_images(args.images if len(args.images) > 1 else args.images[0])
    if not paths:
        print(f"error: no image files found in {' '.join(args.images)}", file=sys.stderr)
        return 2
    backbone = create_backbone(args.backbone, pretrained=not args.random_weights)
    emb = embed_images(
        backbone, paths, batch_size=args.batch_size, progress=not args.quiet, device=args.device
    )
    output = Path(args.output)
    if emb.bad and not args.skip_bad:
        partial = output.with_name(output.stem + ".partial" + output.suffix)
        save_embeddings(emb, partial, backbone)
        print(f"error: {len(emb.bad)} image(s) could not be read:", file=sys.stderr)
        for err in emb.bad:
            print(f"  {err.path}: {err.reason}", file=sys.stderr)
        print(
            f"the {len(emb.paths)} good images were saved to {partial}; rerun with --skip-bad to skip bad files",
            file=sys.stderr,
        )
        return 2
    for err in emb.bad:
        print(f"skipped {err.path}: {err.reason}", file=sys.stderr)
    save_embeddings(emb, output, backbone)
    print(f"wrote {tuple(emb.features.shape)} features of {backbone.identity.name} to {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="focusshot", description=focusshot.__doc__)
    parser.add_argument("--version", action="version", version=f"focusshot {focusshot.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="list the backbone registry")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("embed", help="write pooled features of images to a safetensors file")
    p.add_argument("--backbone", required=True, help="registry name, hf:<repo id>, or a local checkpoint")
    p.add_argument(
        "--images", required=True, nargs="+", help="a folder, a text file of paths, or image files"
    )
    p.add_argument("--output", required=True, help="output .safetensors file")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip undecodable images (logged) instead of failing"
    )
    p.add_argument("--random-weights", action="store_true", help="random weights instead of pretrained ones")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``focusshot`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
