"""Leakage guards: the same image bytes under two labels, in two splits, or twice in one set.

A manifest that gives one image two labels, or the same photo copied into train and test, is
accepted by every loader; an episode can then hold one image as support and as query, and a
split run tests on what it trained on. :func:`find_duplicates` hashes every file's bytes (sha256)
and groups identical ones; the runner warns with the files named (or refuses with ``strict``)
and records the counts in ``run.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from focusshot.data.images import file_sha256
from focusshot.data.sources import LabelledImages

__all__ = ["DuplicateReport", "find_duplicates"]


@dataclass
class DuplicateReport:
    """Groups of files with identical bytes, each group a list of ``"split:class:path"`` strings.

    Attributes:
        conflicting_labels: the same bytes under different class names.
        across_splits: the same bytes in more than one split (train and test, ...).
        repeated: the same bytes more than once in one split under one class (an episode may
            draw one as support and the other as query).
    """

    conflicting_labels: list[list[str]] = field(default_factory=list)
    across_splits: list[list[str]] = field(default_factory=list)
    repeated: list[list[str]] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.conflicting_labels or self.across_splits or self.repeated)

    def counts(self) -> dict[str, int]:
        """Number of groups of each kind (what ``run.json`` records)."""
        return {
            "conflicting_labels": len(self.conflicting_labels),
            "across_splits": len(self.across_splits),
            "repeated": len(self.repeated),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts(), "examples": {k: v[:5] for k, v in self._groups().items() if v}}

    def _groups(self) -> dict[str, list[list[str]]]:
        return {
            "conflicting_labels": self.conflicting_labels,
            "across_splits": self.across_splits,
            "repeated": self.repeated,
        }

    def message(self) -> str:
        """One line per kind found, naming up to three groups."""
        words = {
            "conflicting_labels": "identical image bytes under different labels",
            "across_splits": "identical image bytes in more than one split",
            "repeated": "identical image bytes repeated within a split and class",
        }
        lines = []
        for kind, groups in self._groups().items():
            if groups:
                shown = "; ".join(" = ".join(g) for g in groups[:3])
                lines.append(f"{len(groups)} group(s) of {words[kind]}: {shown}")
        return "\n".join(lines)


def find_duplicates(parts: dict[str, LabelledImages]) -> DuplicateReport:
    """Group the files of every split in ``parts`` (name -> images) by the sha256 of their bytes."""
    by_hash: dict[str, list[tuple[str, str, str]]] = {}
    for split, data in parts.items():
        for path, label in zip(data.paths, data.labels, strict=True):
            try:
                digest = file_sha256(path)
            except OSError:  # unreadable files are reported where images are read
                continue
            by_hash.setdefault(digest, []).append((split, data.class_names[label], str(path)))
    report = DuplicateReport()
    for entries in by_hash.values():
        if len(entries) < 2:
            continue
        names = [f"{s}:{c}:{p}" for s, c, p in entries]
        classes = {c for _, c, _ in entries}
        splits = {s for s, _, _ in entries}
        if len(classes) > 1:
            report.conflicting_labels.append(names)
        if len(splits) > 1:
            report.across_splits.append(names)
        if len(classes) == 1 and len(splits) == 1:
            report.repeated.append(names)
    return report
