"""ClipTokenizer: training, file formats, agreement with Hugging Face, padding and truncation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from focusshot.backbones.tokenizer import EOT_TOKEN, SOT_TOKEN, ClipTokenizer, bytes_to_unicode, clean_text

CORPUS = [
    "a photo of a dog.",
    "a photo of a cat!",
    "a blurry photo of the big red barn, isn't it?",
    "the quick brown fox jumps over the lazy dog",
    "photos of 3 dogs and 12 cats",
    "it's a jersey; they're jeans; we'll see the shoes",
    "café crème brûlée",
    "aaaa aaa bbb",
    "hello   world <|endoftext|>",
] * 3

SENTENCES = [
    "A photo of a dog.",
    "It's a photo of the big red barn, isn't it? They'll've gone; we'd, I'm, you're",
    "UPPER lower MiXeD IT'S",
    "photos of 3 dogs and 12 cats: 3.14159 + 2,000 = 42% in 2024",
    "punctuation!!! ...?! (parens) [brackets] {braces} \"quotes\" 'single' a-b_c/d",
    "café crème brûlée — naïve façade",
    "Ελληνικά κείμενα, 日本語のテキスト and emoji 🐶🐱!!",
    "multiple     spaces\tand\ttabs\nand newlines",
    "   leading and trailing   ",
    "aaaaa aaaaaa zebra xylophone",
    "e\u0301 decomposed accent and a\u00a0no-break space",
    "<|endoftext|> inside text",
    "",
]


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer.train(CORPUS, vocab_size=620)


def test_byte_table_is_a_bijection_in_clip_order() -> None:
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    chars = list(table.values())
    assert chars[0] == "!" and chars[93] == "~" and chars[94] == "¡"
    assert table[ord(" ")] == "Ġ"  # space is byte 32 -> chr(256 + 32)
    assert all(ch.isprintable() and not ch.isspace() for ch in chars)


def test_train_is_deterministic_and_orders_vocab_like_openai(tok: ClipTokenizer) -> None:
    again = ClipTokenizer.train(list(CORPUS), vocab_size=620)
    assert again.merges == tok.merges and again.encoder == tok.encoder
    assert tok.vocab_size == 512 + len(tok.merges) + 2 <= 620
    ids = sorted(tok.encoder.items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in ids]
    chars = list(bytes_to_unicode().values())
    assert tokens[:256] == chars
    assert tokens[256:512] == [c + "</w>" for c in chars]
    assert tokens[512:-2] == ["".join(m) for m in tok.merges]
    assert tokens[-2:] == [SOT_TOKEN, EOT_TOKEN]
    assert (tok.sot_token_id, tok.eot_token_id) == (tok.vocab_size - 2, tok.vocab_size - 1)
    assert tok.encode("a photo of a dog") == [
        tok.encoder[t] for t in ("a</w>", "photo</w>", "of</w>", "a</w>", "dog</w>")
    ]


def test_train_breaks_ties_lexicographically() -> None:
    small = ClipTokenizer.train(["cd ab cd ab"], vocab_size=515)
    assert small.merges == [("a", "b</w>")]  # ("a", "b</w>") and ("c", "d</w>") both occur twice
    full = ClipTokenizer.train(["cd ab cd ab"], vocab_size=600)
    assert full.merges == [("a", "b</w>"), ("c", "d</w>")]  # stops when no pair is left
    with pytest.raises(ValueError, match="at least 514"):
        ClipTokenizer.train(["x"], vocab_size=100)


def test_matches_hugging_face_clip_tokenizer(tok: ClipTokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok.to_files(tmp_path)
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert hf.get_vocab() == tok.encoder
    for text in SENTENCES + CORPUS:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text
        n = len(tok.encode(text)) + 2  # CLIP pads with 0, HF with eot: compare the unpadded prefix
        assert tok(text)[0, :n].tolist() == hf(text)["input_ids"], text


def test_hf_files_round_trip(tok: ClipTokenizer, tmp_path: Path) -> None:
    vocab, merges = tok.to_files(tmp_path)
    assert merges.read_text(encoding="utf-8").splitlines()[0] == "#version: 0.2"
    loaded = ClipTokenizer.from_hf(vocab, merges)
    assert loaded.encoder == tok.encoder and loaded.merges == tok.merges
    assert ClipTokenizer.from_dir(tmp_path).encoder == tok.encoder
    assert json.loads(vocab.read_text(encoding="utf-8")) == tok.encoder


def test_bpe_gz_route_gives_the_same_vocabulary(tok: ClipTokenizer, tmp_path: Path) -> None:
    vocab, merges = tok.to_files(tmp_path)
    gz = tmp_path / "bpe_simple_vocab.txt.gz"
    with gzip.open(gz, "wb") as f:  # OpenAI's format: the merges file, gzipped
        f.write(merges.read_bytes())
    from_gz = ClipTokenizer.from_bpe_gz(gz)
    from_hf = ClipTokenizer.from_hf(vocab, merges)
    assert list(from_gz.encoder.items()) == sorted(from_hf.encoder.items(), key=lambda kv: kv[1])
    assert from_gz.merges == from_hf.merges
    for text in SENTENCES:
        assert from_gz.encode(text) == from_hf.encode(text)
    assert ClipTokenizer.from_bpe_gz(tok.to_bpe_gz(tmp_path / "again.txt.gz")).encoder == tok.encoder
    few = ClipTokenizer.from_bpe_gz(gz, num_merges=10)
    assert few.vocab_size == 512 + 10 + 2 and few.eot_token_id == 523


def test_padding_truncation_and_special_tokens(tok: ClipTokenizer) -> None:
    sot, eot = tok.sot_token_id, tok.eot_token_id
    ids = tok(["a photo of a dog", ""], context_length=10)
    assert ids.dtype == torch.long and ids.shape == (2, 10)
    body = tok.encode("a photo of a dog")
    assert ids[0].tolist() == [sot, *body, eot] + [0] * (10 - len(body) - 2)
    assert ids[1].tolist() == [sot, eot] + [0] * 8
    assert tok("a dog").shape == (1, 77)
    long_text = "the quick brown fox jumps over the lazy dog " * 4
    cut = tok(long_text, context_length=8)[0].tolist()
    assert cut == [sot, *tok.encode(long_text)[:6], eot]
    with pytest.raises(ValueError, match="context_length"):
        tok(long_text, context_length=8, truncate=False)
    assert tok.encode("<|startoftext|> x <|endoftext|>") == [sot, tok.encoder["x</w>"], eot]


def test_cleaning_and_decode(tok: ClipTokenizer) -> None:
    assert clean_text("  Tom &amp;amp; JERRY\t\n  ") == "tom & jerry"
    assert tok.encode("x&amp;y") == tok.encode("x&y")
    assert tok.decode(tok.encode("A photo   of a DOG")) == "a photo of a dog"
    assert tok.decode(tok.encode("café, naïve 🐶")) == "café , naïve 🐶"
    row = tok(["a photo of a cat"], context_length=12)[0]
    assert tok.decode(row) == "a photo of a cat"  # padding after eot ignored
    assert tok.decode(row, skip_special_tokens=False) == "<|startoftext|>a photo of a cat <|endoftext|>"


def test_vocabulary_must_cover_bytes_merges_and_specials(tok: ClipTokenizer) -> None:
    encoder = dict(tok.encoder)
    del encoder[EOT_TOKEN]
    with pytest.raises(ValueError, match="lacks 1 required"):
        ClipTokenizer(encoder, tok.merges)
    encoder = dict(tok.encoder)
    del encoder["".join(tok.merges[0])]
    with pytest.raises(ValueError, match="lacks"):
        ClipTokenizer(encoder, tok.merges)
