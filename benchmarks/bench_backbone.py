"""Extraction throughput of our CLIP ViT against the machine's roofline and against transformers.

Run by hand (not part of the tests)::

    python benchmarks/bench_backbone.py --models clip-vit-b32 clip-vit-b16 --batch 32 --repeats 3

Random weights (no pretrained ViT installs here); fp32 on ``--device`` (default CPU; on a GPU
``--device cuda`` also measures bf16 autocast). For each model:

* roofline images/s = measured GEMM FLOP/s / model FLOPs per image, where the GEMM rate is
  measured in this run on the model's own largest matrix product (tokens x width x 4 width);
* the GEMM rate, ours and transformers are measured in turn, ``--repeats`` rounds, best of each;
* ours: ``forward_features`` (fused attention path) under ``torch.inference_mode``;
* ours compiled: the same under ``torch.compile(dynamic=False)`` (what ``FeatureCache`` runs with
  ``compile="always"``); the first call's compile time is reported apart;
* transformers: ``CLIPVisionModelWithProjection`` holding the same weights (its default
  attention implementation), same inputs; features are checked equal first.

Results go to ``benchmarks/results/backbone.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from focusshot import __version__, create_backbone


def vit_flops(width: int, depth: int, tokens: int, patches: int, patch: int, mlp: int, proj: int) -> float:
    """Floating-point operations (2 per multiply-add) of one ViT image forward."""
    per_block = 2 * tokens * (4 * width * width + 2 * width * mlp) + 2 * 2 * tokens * tokens * width
    embed = 2 * patches * (3 * patch * patch) * width
    return float(depth * per_block + embed + 2 * width * proj)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(m: int, k: int, n: int, seconds: float = 2.0, device: str = "cpu") -> float:
    """Sustained FLOP/s of ``(m, k) @ (k, n)`` in fp32 on ``device``."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    for _ in range(3):
        a @ b
    _sync(a.device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(a.device)
    return 2.0 * m * k * n * count / (time.perf_counter() - start)


def timed(fn, x: torch.Tensor, repeats: int, warmup: bool = True) -> float:
    """Best-of-``repeats`` seconds of ``fn(x)`` (after one warm-up call when ``warmup``)."""
    with torch.inference_mode():
        if warmup:
            fn(x)
        best = float("inf")
        for _ in range(repeats):
            _sync(x.device)
            t = time.perf_counter()
            fn(x)
            _sync(x.device)
            best = min(best, time.perf_counter() - t)
    return best


def hf_twin(model):
    """A transformers CLIPVisionModelWithProjection with our model's weights."""
    import transformers

    v = model.visual
    c = v.cfg
    cfg = transformers.CLIPVisionConfig(
        image_size=c.image_size,
        patch_size=c.patch_size,
        hidden_size=c.width,
        intermediate_size=c.mlp_dim,
        num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads,
        projection_dim=c.proj_dim,
        hidden_act="quick_gelu",
        layer_norm_eps=c.eps,
    )
    ref = transformers.CLIPVisionModelWithProjection(cfg).eval()
    sd = {
        "vision_model.embeddings.class_embedding": v.cls_token.reshape(-1),
        "vision_model.embeddings.patch_embedding.weight": v.patch_embed.weight,
        "vision_model.embeddings.position_embedding.weight": v.pos_embed[0],
        "vision_model.pre_layrnorm.weight": v.norm_pre.weight,
        "vision_model.pre_layrnorm.bias": v.norm_pre.bias,
        "vision_model.post_layernorm.weight": v.norm.weight,
        "vision_model.post_layernorm.bias": v.norm.bias,
        "visual_projection.weight": v.proj.weight,
    }
    names = {
        "attn.q": "self_attn.q_proj",
        "attn.k": "self_attn.k_proj",
        "attn.v": "self_attn.v_proj",
        "attn.proj": "self_attn.out_proj",
        "norm1": "layer_norm1",
        "norm2": "layer_norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i, blk in enumerate(v.blocks):
        for ours, theirs in names.items():
            mod = blk.get_submodule(ours)
            for kind in ("weight", "bias"):
                sd[f"vision_model.encoder.layers.{i}.{theirs}.{kind}"] = getattr(mod, kind)
    missing, unexpected = ref.load_state_dict({k: t.detach() for k, t in sd.items()}, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"twin mismatch: missing {missing}, unexpected {unexpected}")
    return ref


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["clip-vit-b32", "clip-vit-b16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]; cuda adds a bf16 autocast row")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "backbone.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    for name in args.models:
        device = torch.device(args.device)
        model = create_backbone(name, pretrained=False).to(device)
        c = model.visual.cfg
        grid = c.image_size // c.patch_size
        tokens = grid * grid + 1
        flops = vit_flops(c.width, c.depth, tokens, grid * grid, c.patch_size, c.mlp_dim, c.proj_dim)
        x = torch.randn(args.batch, 3, c.image_size, c.image_size, device=device)
        ref = hf_twin(model).to(device)
        with torch.inference_mode():
            diff = float((model.forward_features(x[:2]) - ref(pixel_values=x[:2]).image_embeds).abs().max())
        # interleave the three measurements so that they see the same machine load; keep each one's best
        compiled = torch.compile(model.forward_features, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            comp_diff = float((compiled(x) - model.forward_features(x)).abs().max())
        compile_s = time.perf_counter() - start
        ours_s = hf_s = comp_s = float("inf")
        rate = 0.0
        for i in range(args.repeats):
            rate = max(
                rate, gemm_rate(args.batch * tokens, c.width, c.mlp_dim, seconds=1.0, device=args.device)
            )
            ours_s = min(ours_s, timed(model.forward_features, x, 1, warmup=i == 0))
            comp_s = min(comp_s, timed(compiled, x, 1, warmup=False))
            hf_s = min(hf_s, timed(lambda t, r=ref: r(pixel_values=t).image_embeds, x, 1, warmup=i == 0))
        roof = rate / flops
        row = {
            "model": name,
            "batch": args.batch,
            "gflops_per_image": flops / 1e9,
            "gemm_gflops_per_s": rate / 1e9,
            "roofline_images_per_s": roof,
            "ours_images_per_s": args.batch / ours_s,
            "transformers_images_per_s": args.batch / hf_s,
            "ours_fraction_of_roofline": args.batch / ours_s / roof,
            "ours_over_transformers": hf_s / ours_s,
            "max_abs_feature_diff": diff,
            "compiled_images_per_s": args.batch / comp_s,
            "compiled_over_transformers": hf_s / comp_s,
            "compiled_over_eager": ours_s / comp_s,
            "compile_seconds": compile_s,
            "max_abs_compiled_diff": comp_diff,
        }
        if device.type == "cuda":

            def bf16(t, m=model):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return m.forward_features(t)

            with torch.inference_mode():
                full = model.forward_features(x)
                rel = float((bf16(x).float() - full).norm() / full.norm())
            bf_s = timed(bf16, x, args.repeats)
            row.update(
                device=torch.cuda.get_device_name(device),
                bf16_images_per_s=args.batch / bf_s,
                bf16_over_eager=ours_s / bf_s,
                bf16_relative_l2_error=rel,
            )
        results.append(row)
        print(
            f"{name}: ours {row['ours_images_per_s']:.2f} img/s = {row['ours_fraction_of_roofline']:.0%} of "
            f"roofline ({roof:.2f} img/s); transformers {row['transformers_images_per_s']:.2f} img/s; "
            f"ours/transformers {row['ours_over_transformers']:.2f}x; feature diff {diff:.1e}; compiled "
            f"{row['compiled_images_per_s']:.2f} img/s "
            f"({row['compiled_over_transformers']:.2f}x transformers, "
            f"compile {compile_s:.0f} s, diff {comp_diff:.1e})",
            flush=True,
        )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    import transformers

    out.write_text(
        json.dumps(
            {
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "seed": 0,
                "focusshot": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
