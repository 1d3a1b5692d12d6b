"""SAV (Mitra et al., arXiv 2412.00142): head selection, leave-one-out, votes, save/load, runs."""

import pytest
import torch
import torch.nn.functional as F

import focusshot
from focusshot.backbones.prefix import Prefix
from focusshot.methods.base import FitContext, create_method, fitted_from_state, list_methods
from focusshot.methods.sav import SavOptions, fit_sav, score_heads
from tests.methods.helpers import class_folders


@pytest.fixture(scope="module")
def vit():
    return focusshot.create_backbone("tiny-vit")  # 2 attention layers x 4 heads x 8 dims


def _data(seed: int, sizes: list[int], layers: int = 2, heads: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    centres = torch.randn(len(sizes), layers, heads, dim, generator=g)
    x = centres[labels] + 1.5 * torch.randn(len(labels), layers, heads, dim, generator=g)
    return x, labels


def test_registered_with_a_head_out_prefix(vit) -> None:
    assert "sav" in list_methods()
    m = create_method("sav")
    assert not m.trains and not m.needs_text
    assert m.prefix(vit) == Prefix.head_out((0, 1))
    assert create_method("sav", layers=[-1]).prefix(vit) == Prefix.head_out((1,))
    for name in ("tiny-swin", "tiny-efficientnet"):
        with pytest.raises(ValueError, match="method 'sav' reads the per-head"):
            m.prefix(focusshot.create_backbone(name))
    with pytest.raises(ValueError, match="sav.*out of range"):
        create_method("sav", layers=[5]).prefix(vit)


def test_options_are_checked() -> None:
    bad = [
        {"heads": 0},
        {"heads": True},
        {"heads_fraction": -0.1},
        {"heads_fraction": 1.5},
        {"layers": [1, 1]},
        {"layers": ["a"]},
        {"leave_one_out": "yes"},
    ]
    for opts in bad:
        with pytest.raises(ValueError):
            create_method("sav", opts)
    with pytest.raises(ValueError, match=r"similarity must be one of \['cosine', 'cosine_raw'\]"):
        create_method("sav", similarity="euclid")
    assert create_method("sav", layers=[0, -1]).options.layers == (0, -1)
    assert SavOptions(heads=20).count(8) == 8  # clamped to the heads available
    assert SavOptions(heads=3).count(144) == 3
    assert SavOptions(heads_fraction=20 / 784).count(784) == 20  # the paper's share
    assert SavOptions(heads_fraction=20 / 784).count(144) == 4  # a ViT-B: 3.67 heads, rounded
    assert SavOptions(heads_fraction=0.001).count(8) == 1  # at least one


@pytest.mark.parametrize("similarity", ["cosine", "cosine_raw"])
def test_one_head_is_that_heads_nearest_class_mean(vit, similarity) -> None:
    x, y = _data(0, [3, 3, 3])
    q, _ = _data(1, [2, 2, 2])
    fitted = create_method("sav", heads=1, similarity=similarity).fit(x, y, FitContext(vit, 3))
    ((layer, head),) = fitted.info()["selected_heads"]
    v = x[:, layer, head]  # (N, D)
    v = F.normalize(v, dim=-1) if similarity == "cosine" else v
    means = torch.stack([v[y == c].mean(0) for c in range(3)])  # (C, D)
    sims = F.normalize(q[:, layer, head], dim=-1) @ F.normalize(means, dim=-1).T  # (M, C)
    pred = sims.argmax(-1)
    expected = torch.log(F.one_hot(pred, 3).float() + (3 + sims) / 8)
    assert torch.allclose(fitted.logits(q), expected, atol=1e-6)
    assert torch.equal(fitted.logits(q).argmax(-1), pred)


def _brute_force(x: torch.Tensor, y: torch.Tensor, c: int, similarity: str, loo: bool):
    """Per head: correct count and mean margin, recomputing class means for every sample."""
    n, p, _ = x.shape
    v = F.normalize(x, dim=-1) if similarity == "cosine" else x
    correct = torch.zeros(p, dtype=torch.long)
    margin = torch.zeros(p, dtype=torch.float64)
    for i in range(n):
        means = []
        for k in range(c):
            keep = y == k
            if loo and k == y[i] and int(keep.sum()) > 1:
                keep = keep.clone()
                keep[i] = False  # the sample's own contribution is gone
            means.append(v[keep].mean(0))
        sims = torch.einsum("pd,cpd->pc", F.normalize(x[i], dim=-1), F.normalize(torch.stack(means), dim=-1))
        correct += (sims.argmax(-1) == y[i]).long()
        others = torch.cat([sims[:, : y[i]], sims[:, y[i] + 1 :]], dim=1).amax(-1)
        margin += (sims[:, y[i]] - others).double()
    return correct, margin / n


@pytest.mark.parametrize("similarity", ["cosine", "cosine_raw"])
@pytest.mark.parametrize("loo", [True, False])
def test_head_scores_match_a_brute_force_recount(similarity, loo) -> None:
    x, y = _data(2, [1, 2, 3, 4], layers=3, heads=2, dim=6)
    x = x.reshape(len(y), 6, 6)
    scores = score_heads(x, y, 4, similarity, loo)
    correct, margin = _brute_force(x, y, 4, similarity, loo)
    assert torch.equal(scores.correct, correct)
    assert torch.allclose(scores.margin, margin, atol=1e-6)
    assert scores.loo_undefined == ([0] if loo else [])


def _memoriser_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes, two shots, one layer, two heads, D=4.

    Head 0 is honest: the classes are two tight, nearby clusters (right with or without
    leave-one-out, by a small margin). Head 1 memorises: the two samples of a class point in
    opposite directions, so each matches the full class mean (half itself) by a wide margin, but
    its leave-one-out mean (the other sample) is anti-aligned with it.
    """
    s = 0.5
    honest = torch.tensor([[1, 0.10, 0, 0], [1, 0.12, 0, 0], [1, -0.10, 0, 0], [1, -0.12, 0, 0]])
    memo = torch.tensor([[1, s, 0, 0], [-1, s, 0, 0], [0, 0, 1, s], [0, 0, -1, s]])
    return torch.stack([honest, memo], dim=1)[:, None], torch.tensor([0, 0, 1, 1])  # (4, 1, 2, 4)


def test_leave_one_out_never_counts_a_samples_own_contribution() -> None:
    x, y = _memoriser_case()
    with_self = score_heads(x[:, 0], y, 2, "cosine", leave_one_out=False)
    without = score_heads(x[:, 0], y, 2, "cosine", leave_one_out=True)
    assert with_self.correct.tolist() == [4, 4]  # both heads "perfect" when a sample sees itself
    assert with_self.margin[1] > with_self.margin[0]  # ... and the memoriser wins on margin
    assert without.correct.tolist() == [4, 0]
    official = fit_sav(x, y, 2, SavOptions(heads=1, leave_one_out=False))
    ours = fit_sav(x, y, 2, SavOptions(heads=1))
    assert official.info()["selected_heads"] == [[0, 1]]
    assert ours.info()["selected_heads"] == [[0, 0]]
    assert ours.info()["selection_accuracy"] == [1.0]
    query = torch.stack([torch.tensor([1, 0.11, 0, 0]), torch.tensor([0, 0, 1, 0.5])])[:, None, None]
    query = query.expand(2, 1, 2, 4)
    assert ours.logits(query).argmax(-1).tolist() == [0, 0]  # the honest head: both near class 0


def test_one_shot_falls_back_to_full_means_and_ranks_by_margin() -> None:
    x, y = _data(3, [1, 1, 1], layers=2, heads=3, dim=5)
    loo = fit_sav(x, y, 3, SavOptions(heads=6))
    full = fit_sav(x, y, 3, SavOptions(heads=6, leave_one_out=False))
    info = loo.info()
    assert info["loo_undefined_classes"] == [0, 1, 2]
    assert full.info()["loo_undefined_classes"] == []
    assert info["selected_heads"] == full.info()["selected_heads"]  # no effect at one shot
    assert info["selection_accuracy"] == [1.0] * 6  # every sample is its own class mean
    # the ranking is by margin: cosine to itself (1) minus the nearest other support vector
    u = F.normalize(x.reshape(3, 6, 5), dim=-1)
    cos = torch.einsum("npd,mpd->pnm", u, u)  # (P, N, N)
    others = cos.masked_fill(torch.eye(3, dtype=torch.bool), -2).amax(-1)  # (P, N)
    margin = (1 - others).mean(-1)
    order = torch.argsort(margin, descending=True)
    assert [layer * 3 + h for layer, h in info["selected_heads"]] == order.tolist()
    # mixed: only the one-shot class falls back
    x, y = _data(4, [1, 2, 2])
    assert fit_sav(x, y, 3).info()["loo_undefined_classes"] == [0]


def test_ties_are_broken_by_margin_then_index() -> None:
    x, y = _data(5, [2, 2], layers=1, heads=1, dim=4)
    x = x.expand(4, 2, 3, 4).clone()  # six identical heads
    fitted = fit_sav(x, y, 2, SavOptions(heads=4))
    assert fitted.info()["selected_heads"] == [[0, 0], [0, 1], [0, 2], [1, 0]]


def test_logits_are_vote_shares_with_a_similarity_tie_break() -> None:
    x, y = _data(6, [3, 3, 3], layers=2, heads=4, dim=8)
    q, _ = _data(7, [4, 4, 4], layers=2, heads=4, dim=8)
    fitted = fit_sav(x, y, 3, SavOptions(heads=5))
    votes = fitted.votes(q)
    sims = fitted.similarities(q)  # (M, K, C)
    assert votes.sum(-1).tolist() == [5] * len(q)
    probs = fitted.logits(q).softmax(-1)
    share = votes + (3 + sims.mean(1)) / 8
    assert torch.allclose(probs, share / share.sum(-1, keepdim=True), atol=1e-6)
    pred = probs.argmax(-1)
    top = votes.amax(-1, keepdim=True)
    assert torch.equal(votes.gather(1, pred[:, None]), top)  # the majority vote always wins
    tied = (votes == top).sum(-1) > 1
    for i in torch.nonzero(tied).flatten().tolist():  # ... and a tie goes to the more similar class
        cands = torch.nonzero(votes[i] == top[i]).flatten()
        assert int(pred[i]) == int(cands[sims[i].mean(0)[cands].argmax()])


def test_save_load_and_checks(vit) -> None:
    x, y = _data(8, [2, 2, 2])
    q, _ = _data(9, [1, 1, 1])
    fitted = create_method("sav", heads=3, layers=[1, 0]).fit(x, y, FitContext(vit, 3))
    state, config = fitted.state_dict(), fitted.config()
    assert state["selected"].shape == (3, 2) and state["class_means"].shape == (3, 3, 8)
    assert config["layers"] == [1, 0]
    again = fitted_from_state(state, config, vit)
    assert torch.equal(again.logits(q), fitted.logits(q))
    with pytest.raises(ValueError, match="fitted on layers"):
        fitted_from_state(state, {**config, "layers": [0, 1]}, vit)
    with pytest.raises(ValueError, match=r"SAV expects query head outputs \(M, 2, 4, 8\)"):
        fitted.logits(q[:, :1])
    with pytest.raises(ValueError, match="every class"):
        create_method("sav").fit(x, y, FitContext(vit, 4))
    with pytest.raises(ValueError, match="prefix has 1 layers"):
        create_method("sav", layers=[0]).fit(x, y, FitContext(vit, 3))


def test_fit_save_load_predict(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    support = class_folders(tmp_path / "support")
    clf = focusshot.fit(support, backbone="tiny-clip-vit", method="sav", options={"heads": 3, "layers": [-1]})
    assert clf.prefix == Prefix.head_out((1,))
    assert clf.fitted.info()["heads_selected"] == 3
    path = clf.save(tmp_path / "sav.safetensors")
    loaded = focusshot.Classifier.load(path)
    paths = sorted(str(p) for p in support.rglob("*.png"))
    probs, kept, _ = clf.predict_proba(paths)
    again, _, _ = loaded.predict_proba(paths)
    assert torch.equal(probs, again) and len(kept) == 6
    assert torch.allclose(probs.sum(-1), torch.ones(6))
    assert {p.label for p in loaded.predict(support)} <= {"class_0", "class_1"}


def test_episodic_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(tmp_path / "fs"))
    out = focusshot.evaluate(
        "tiny-clip-vit",
        "world:clutter?per_class=4&image_size=32",
        ["protonet", "sav"],
        ways=3,
        shots=2,
        queries=2,
        episodes=2,
        output=tmp_path / "run",
        cache_dir=tmp_path / "cache",
    )
    sav = [r for r in out.rows if r["method"] == "sav"]
    assert len(sav) == 2 and all(0.0 <= r["accuracy"] <= 1.0 for r in sav)
    assert {r["method"] for r in out.summary} == {"protonet", "sav"}


# --- per-head activations of a Hugging Face causal (multimodal) language model ---------------------


def _tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 query heads per key/value head
        vocab_size=64,
        max_position_embeddings=64,
    )
    return LlamaConfig(**{**base, **kw})


def _manual_last_token_heads(lm, hidden: torch.Tensor, layer: int, row: int, t: int) -> torch.Tensor:
    """Layer ``layer``'s per-head attention output ``(H, D)`` at position ``t`` of ``row``, from the
    layer's input ``hidden`` ``(B, T, C)``: norm, q/k/v, rotary, causal softmax, per head."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    block = lm.layers[layer]
    attn = block.self_attn
    h = block.input_layernorm(hidden[row : row + 1])  # (1, T, C)
    n, d = h.shape[1], attn.head_dim
    q, k, v = (p(h).view(1, n, -1, d).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    cos, sin = lm.rotary_emb(h, torch.arange(n)[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("hd,hsd->hs", q[0, :, t], k[0, :, : t + 1]) * d**-0.5  # (H, t + 1): causal
    return torch.einsum("hs,hsd->hd", scores.softmax(-1), v[0, :, : t + 1])  # (H, D)


def test_vlm_head_activations_of_a_tiny_llama() -> None:
    transformers = pytest.importorskip("transformers")
    from focusshot.methods.sav_vlm import last_token_index, vlm_head_activations

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_tiny_llama_config()).eval()
    ids = torch.randint(0, 64, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding: row 1's last token is position 4
    inputs = {"input_ids": ids, "attention_mask": mask}
    acts = vlm_head_activations(model, inputs)
    assert acts.shape == (3, 3, 4, 8) and acts.dtype == torch.float32  # (B, L, H, D)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states  # [l]: input of layer l
        for layer in (0, 2):
            for row, t in ((0, 6), (1, 4)):
                want = _manual_last_token_heads(model.model, hidden[layer], layer, row, t)
                assert torch.allclose(acts[row, layer], want, atol=1e-5)
    assert torch.equal(vlm_head_activations(model, inputs, layers=[-1]), acts[:, 2:])
    assert last_token_index(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]]), 4).tolist() == [3, 2]  # left, right
    with pytest.raises(ValueError, match="out of range"):
        vlm_head_activations(model, inputs, layers=[3])


def test_vlm_head_activations_of_a_tiny_llava_feed_sav() -> None:
    transformers = pytest.importorskip("transformers")
    from focusshot.methods.sav_vlm import o_proj_modules, vlm_head_activations

    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8,
    )  # fmt: skip
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=_tiny_llama_config(num_hidden_layers=2), image_token_index=63
    )
    model = transformers.LlavaForConditionalGeneration(config).eval()
    names = [p.name for p in o_proj_modules(model)]
    assert len(names) == 2 and all("language_model" in n for n in names)  # not the vision tower's
    ids = torch.randint(0, 60, (6, 9))
    ids[:, 1:5] = 63  # (16 / 8)^2 = 4 image tokens
    pixels = torch.randn(6, 3, 16, 16)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    acts = vlm_head_activations(model, inputs)
    assert acts.shape == (6, 2, 4, 8)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    want = _manual_last_token_heads(model.model.language_model, hidden[1], 1, 3, 8)
    assert torch.allclose(acts[3, 1], want, atol=1e-5)
    other = vlm_head_activations(model, {**inputs, "pixel_values": pixels.flip(0)})
    assert not torch.allclose(other, acts)  # the image reaches the last token
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    fitted = fit_sav(acts, labels, 3, SavOptions(heads=3))
    assert fitted.logits(acts).shape == (6, 3) and fitted.info()["heads_available"] == 8
