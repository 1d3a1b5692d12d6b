"""CLIP's byte-level BPE tokenizer, implemented here (no download, no ``tokenizers`` needed).

Radford et al., *Learning Transferable Visual Models From Natural Language Supervision* (ICML
2021), section 2.4: a lower-cased byte-pair encoding (Sennrich et al., 2016) with a 49 152-token
vocabulary, texts bracketed by ``<|startoftext|>`` and ``<|endoftext|>`` and padded to 77
tokens. Words are pre-split by CLIP's regular expression, their UTF-8 bytes mapped one-to-one
onto printable characters (GPT-2's byte-level trick), and the end of each pre-token is marked
by ``</w>`` on its last symbol.

Two file formats load into the same ``ClipTokenizer``:

* Hugging Face: ``vocab.json`` (token -> id) and ``merges.txt`` (``#version`` header, then one
  ``"a b"`` merge per line, in rank order);
* OpenAI: ``bpe_simple_vocab_16e6.txt.gz`` (a header line, then merges); the vocabulary is
  derived from the merges: the 256 byte symbols, the same with ``</w>``, one token per merge,
  then ``<|startoftext|>`` and ``<|endoftext|>``.

``ClipTokenizer.train`` learns a small vocabulary from a list of texts, so focusshot's tiny
test models can carry a real tokenizer; ``to_files`` saves it in the Hugging Face format.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import regex
import torch
from torch import Tensor

try:  # optional, as in OpenAI's tokenizer: repairs mojibake before tokenising
    import ftfy  # type: ignore[import-not-found]  # optional, and it ships no type information
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None

__all__ = ["EOT_TOKEN", "OPENAI_NUM_MERGES", "SOT_TOKEN", "ClipTokenizer", "bytes_to_unicode", "clean_text"]

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
#: Merges OpenAI's CLIP takes from the head of ``bpe_simple_vocab_16e6.txt.gz``:
#: 49 408 tokens = 512 byte symbols + 48 894 merges + 2 special tokens.
OPENAI_NUM_MERGES = 49152 - 256 - 2

#: CLIP's pre-tokeniser: the special tokens, English contractions, runs of letters, single
#: digits, runs of other non-space characters.
_PRETOKENIZE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE, in CLIP's vocabulary order.

    The 188 bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves and come first; the remaining 68 bytes (controls,
    space, soft hyphen, ...) take the characters ``chr(256 + n)`` in increasing byte order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def _base_symbols() -> list[str]:
    """The 512 symbols every CLIP vocabulary starts with: bytes, then bytes + ``</w>``."""
    chars = list(bytes_to_unicode().values())
    return chars + [c + END_OF_WORD for c in chars]


def clean_text(text: str) -> str:
    """CLIP's text cleaning: ftfy (if installed, else NFC), html-unescape twice, collapse
    whitespace, strip, lower-case."""
    text = ftfy.fix_text(text) if ftfy is not None else unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def _pretokens(text: str) -> list[str]:
    """Cleaned text -> pre-tokens in the byte-level alphabet (special tokens kept verbatim)."""
    enc = bytes_to_unicode()
    return ["".join(enc[b] for b in tok.encode("utf-8")) for tok in _PRETOKENIZE.findall(clean_text(text))]


def _read_merges(lines: Iterable[str], path: Path) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    for n, line in enumerate(lines, start=2):
        line = line.rstrip("\r\n")
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"{path}, line {n}: expected a merge 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer.

    ``encode(text)`` gives ids without special tokens; calling the tokenizer on texts gives the
    padded ``(B, context_length)`` id tensor CLIP's text tower takes. Build one with
    ``from_hf``, ``from_bpe_gz``, ``from_dir`` or ``train``.

    Args:
        encoder: token -> id; must contain every byte symbol (alone and with ``</w>``), every
            merge result, ``<|startoftext|>`` and ``<|endoftext|>``.
        merges: merge pairs in rank order (earlier merges apply first).
    """

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]]) -> None:
        missing = [t for t in (SOT_TOKEN, EOT_TOKEN) if t not in encoder]
        missing += [s for s in _base_symbols() if s not in encoder]
        missing += ["".join(m) for m in merges if "".join(m) not in encoder]
        if missing:
            raise ValueError(f"vocabulary lacks {len(missing)} required token(s), e.g. {missing[:5]}")
        ids = list(encoder.values())
        if len(set(ids)) != len(ids):
            raise ValueError("vocabulary maps several tokens to the same id")
        self.encoder: dict[str, int] = dict(encoder)
        self.decoder: dict[int, str] = {i: t for t, i in encoder.items()}
        self.merges: list[tuple[str, str]] = [tuple(m) for m in merges]  # type: ignore[misc]  # pairs, as typed
        self.ranks: dict[tuple[str, str], int] = {m: r for r, m in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, tuple[str, ...]] = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_merges(cls, merges: Sequence[tuple[str, str]]) -> ClipTokenizer:
        """The OpenAI vocabulary built from ``merges``: bytes, bytes + ``</w>``, merges, specials."""
        tokens = _base_symbols() + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        encoder = {t: i for i, t in enumerate(tokens)}
        if len(encoder) != len(tokens):
            dupes = [t for t, c in Counter(tokens).items() if c > 1]
            raise ValueError(f"merges produce duplicate tokens, e.g. {dupes[:5]}")
        return cls(encoder, merges)

    @classmethod
    def from_hf(
        cls, vocab_json_path: str | os.PathLike[str], merges_txt_path: str | os.PathLike[str]
    ) -> ClipTokenizer:
        """Load Hugging Face ``vocab.json`` + ``merges.txt`` (a ``#version`` first line is skipped)."""
        vpath, mpath = Path(vocab_json_path), Path(merges_txt_path)
        encoder = json.loads(vpath.read_text(encoding="utf-8"))
        if not isinstance(encoder, dict):
            raise ValueError(f"{vpath} must hold a JSON object token -> id")
        lines = mpath.read_text(encoding="utf-8").split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        return cls({str(k): int(v) for k, v in encoder.items()}, _read_merges(lines, mpath))

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> ClipTokenizer:
        """Load ``vocab.json`` + ``merges.txt`` from ``directory`` (as ``to_files`` writes them)."""
        d = Path(directory)
        return cls.from_hf(d / "vocab.json", d / "merges.txt")

    @classmethod
    def from_bpe_gz(
        cls, path: str | os.PathLike[str], num_merges: int | None = OPENAI_NUM_MERGES
    ) -> ClipTokenizer:
        """Load OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` format.

        The first line (a header) is skipped, as OpenAI's loader does, and at most
        ``num_merges`` merges are used (OpenAI CLIP: the first 48 894; ``None``: all). The
        vocabulary is then derived from the merges (see ``from_merges``).
        """
        p = Path(path)
        with gzip.open(p, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1:]
        merges = _read_merges(lines, p)
        if num_merges is not None:
            merges = merges[:num_merges]
        return cls.from_merges(merges)

    @classmethod
    def train(cls, corpus: Iterable[str], vocab_size: int) -> ClipTokenizer:
        """Learn a byte-level BPE of at most ``vocab_size`` tokens from ``corpus`` (deterministic).

        Texts are cleaned and pre-tokenised exactly as ``encode`` does (special-token strings
        are skipped). Starting from the 512 byte symbols, each step merges the adjacent pair
        with the highest count over the corpus's pre-tokens; ties go to the lexicographically
        smallest pair ``(a, b)`` (Python string order of the byte-level symbols). A pair whose
        concatenation is already a token is passed over, so token strings stay unique. Training
        stops at ``vocab_size - 514`` merges or when no pair is left (the vocabulary is then
        smaller). The vocabulary is in OpenAI's order, so ``eot_token_id`` is the largest id.

        Raises:
            ValueError: ``vocab_size`` below 514 (512 byte symbols + 2 special tokens).
        """
        base = len(_base_symbols()) + 2
        if vocab_size < base:
            raise ValueError(
                f"vocab_size must be at least {base} (byte symbols + special tokens), got {vocab_size}"
            )
        word_counts: Counter[str] = Counter()
        for text in corpus:
            word_counts.update(t for t in _pretokens(text) if t not in (SOT_TOKEN, EOT_TOKEN))
        words: list[list[str]] = []
        freqs: list[int] = []
        for word, c in sorted(word_counts.items()):
            words.append([*word[:-1], word[-1] + END_OF_WORD])
            freqs.append(c)
        pair_counts: Counter[tuple[str, str]] = Counter()
        where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
        for i, (w, c) in enumerate(zip(words, freqs, strict=True)):
            for pair in pairwise(w):
                pair_counts[pair] += c
                where[pair].add(i)
        known = set(_base_symbols())
        merges: list[tuple[str, str]] = []
        while len(merges) < vocab_size - base:
            best: tuple[str, str] | None = None
            best_key: tuple[int, tuple[str, str]] | None = None
            for pair, count in pair_counts.items():
                if count <= 0 or pair[0] + pair[1] in known:
                    continue
                key = (-count, pair)
                if best_key is None or key < best_key:
                    best, best_key = pair, key
            if best is None:
                break
            merges.append(best)
            merged = best[0] + best[1]
            known.add(merged)
            for i in sorted(where.pop(best, ())):
                w, c = words[i], freqs[i]
                for pair in pairwise(w):
                    pair_counts[pair] -= c
                new = _merge_pair(w, best, merged)
                words[i] = new
                for pair in pairwise(new):
                    pair_counts[pair] += c
                    where[pair].add(i)
            pair_counts.pop(best, None)
        return cls.from_merges(merges)

    # ------------------------------------------------------------------ saving

    def to_files(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``vocab.json`` and ``merges.txt`` (Hugging Face format) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        vocab = d / "vocab.json"
        merges = d / "merges.txt"
        ordered = dict(sorted(self.encoder.items(), key=lambda kv: kv[1]))
        vocab.write_text(json.dumps(ordered, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        merges.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges), encoding="utf-8")
        return vocab, merges

    def to_bpe_gz(self, path: str | os.PathLike[str]) -> Path:
        """Write the merges in OpenAI's ``.txt.gz`` format (header line, then merges)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
        with gzip.open(p, "wt", encoding="utf-8") as f:
            f.write(text)
        return p

    # ------------------------------------------------------------------ properties

    @property
    def sot_token_id(self) -> int:
        return self.encoder[SOT_TOKEN]

    @property
    def eot_token_id(self) -> int:
        return self.encoder[EOT_TOKEN]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, merges={len(self.merges)})"

    # ------------------------------------------------------------------ encoding

    def bpe(self, token: str) -> tuple[str, ...]:
        """One pre-token (byte-level alphabet) -> its BPE symbols, the last ending in ``</w>``.

        Repeatedly merges the adjacent pair of lowest rank, every occurrence left to right,
        until no adjacent pair is a known merge.
        """
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = [*token[:-1], token[-1] + END_OF_WORD]
        while len(word) > 1:
            ranked = [(self.ranks[p], p) for p in pairwise(word) if p in self.ranks]
            if not ranked:
                break
            _, pair = min(ranked)
            word = _merge_pair(word, pair, pair[0] + pair[1])
        out = tuple(word)
        if len(self._cache) > 100_000:
            self._cache = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}
        self._cache[token] = out
        return out

    def tokenize(self, text: str) -> list[str]:
        """Text -> BPE symbol strings (no special tokens added)."""
        return [sym for tok in _pretokens(text) for sym in self.bpe(tok)]

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, without ``<|startoftext|>``/``<|endoftext|>`` around it.

        The text is cleaned (ftfy if installed, else NFC; html-unescaped; whitespace collapsed;
        lower-cased) and split by CLIP's pattern. The strings ``<|startoftext|>`` and
        ``<|endoftext|>`` inside ``text`` become their special ids, as in OpenAI's tokenizer.
        """
        return [self.encoder[sym] for sym in self.tokenize(text)]

    def decode(self, ids: Iterable[int] | Tensor, skip_special_tokens: bool = True) -> str:
        """Token ids -> text.

        Ids after the first ``<|endoftext|>`` (padding) are ignored; with
        ``skip_special_tokens`` the start/end tokens are dropped. Pre-tokens come back
        separated by single spaces (``</w>`` marks their ends), so punctuation is spaced:
        ``decode(encode("a,b")) == "a , b"``; the result is stripped.
        """
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        eot = self.eot_token_id
        pieces: list[str] = []
        for i in ids:
            i = int(i)
            if i in (self.sot_token_id, eot):
                if not skip_special_tokens:
                    pieces.append(self.decoder[i])
                if i == eot:
                    break
                continue
            if i not in self.decoder:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            pieces.append(self.decoder[i])
        raw = bytearray(self.byte_decoder[c] for c in "".join(pieces))
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int = 77, truncate: bool = True) -> Tensor:
        """Texts -> ids ``(B, context_length)`` (int64): ``[sot] + tokens + [eot]``, zero-padded.

        A text longer than ``context_length - 2`` tokens is truncated to its first
        ``context_length - 1`` ids with ``<|endoftext|>`` written over the last slot, so every
        row still ends in ``eot`` (OpenAI's ``clip.tokenize(truncate=True)``). With
        ``truncate=False`` such a text raises ``ValueError`` instead. A single string gives
        ``B = 1``.
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(
                        f"text {row} needs {len(ids)} tokens > context_length {context_length}: {text!r}"
                    )
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _merge_pair(word: Sequence[str], pair: tuple[str, str], merged: str) -> list[str]:
    """Replace every non-overlapping occurrence of ``pair`` in ``word`` (left to right) by ``merged``."""
    first, second = pair
    out: list[str] = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == first and word[i + 1] == second:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
