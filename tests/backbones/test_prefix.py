"""The head_in prefix: what forward_head pools, shared with tokens at L on a ViT, refused on Swin."""

import pytest
import torch

import focusshot
from focusshot.backbones.prefix import Prefix, compute_prefix, expected_shape


@pytest.mark.parametrize("name", ["tiny-clip-rn", "tiny-clip-vit"])
def test_head_in_is_what_forward_head_pools(name) -> None:
    b = focusshot.create_backbone(name, seed=0).eval()
    p = Prefix.head_in().resolve(b)
    crop = b.preprocess.crop
    x = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tokens = compute_prefix(b, p, x)
        assert tuple(tokens.shape[1:]) == expected_shape(b, p)
        assert torch.allclose(b.forward_head(tokens), b.forward_features(x), atol=1e-5)
    if b.token_blocks():  # a ViT: the same cache entry as the last block's output
        assert p == Prefix.tokens(b.token_blocks()).resolve(b)
    else:
        assert p.key() == "head_in" and Prefix.head_in().with_view(2, 1).key() == "head_in@view2/seed1"


def test_head_in_refused_where_no_single_sequence_enters_the_head() -> None:
    swin = focusshot.create_backbone("tiny-swin", seed=0)
    with pytest.raises(ValueError, match="no single token sequence"):
        Prefix.head_in().resolve(swin)
    with pytest.raises(ValueError, match="takes no layer"):
        Prefix("head_in", 3)
