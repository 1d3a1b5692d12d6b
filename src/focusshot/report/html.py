"""One self-contained HTML page per run: ``focusshot report RUN_DIR`` (and the end of ``evaluate``).

Reads only what the run wrote (``run.json``, ``summary.csv``, ``paired.csv``, ``results.jsonl``
or ``results.jsonl.gz``, ``attention.json``, the PNG figures, ``*.auto.json``) and writes
``RUN_DIR/report.html``: the config, the backbone's identity and versions, the summary table,
paired differences as a forest plot, accuracy against shots for split runs, reliability
diagrams, attention maps and metrics, each method's relevance maps (``explain_maps.png``), and
``fit --method auto`` candidates when the folder holds them. Every image is inlined (base64),
styles are inline, there is no script from anywhere and no network access; the page follows the
reader's light or dark mode and narrows to a phone. Figures are drawn with matplotlib (Agg).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from focusshot.evaluation.results import read_results, results_file

__all__ = ["write_report"]

_CSS = """
:root { color-scheme: light dark; --fg: #1b1b1f; --bg: #ffffff; --muted: #5b5b66; --line: #d6d6de;
  --accent: #3b5bdb; }
@media (prefers-color-scheme: dark) { :root { --fg: #e8e8ee; --bg: #15161a; --muted: #a0a0ad;
  --line: #34353d; --accent: #8ea2ff; } img.fig { background: #ffffff; } }
body { font: 15px/1.5 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 0 auto;
  padding: 1rem; max-width: 70rem; }
h1 { font-size: 1.5rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
.scroll { overflow-x: auto; } table { border-collapse: collapse; font-size: .9rem; }
th, td { border-bottom: 1px solid var(--line); padding: .25rem .6rem; text-align: right;
  white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } .muted { color: var(--muted); }
img.fig { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
code { font-size: .85rem; } details { margin: .5rem 0; }
"""


def _img(data: bytes, alt: str) -> str:
    src = "data:image/png;base64," + base64.b64encode(data).decode()
    return f'<img class="fig" alt="{html.escape(alt)}" src="{src}">'


def _fmt(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    return html.escape(str(v)) if f.is_integer() and "." not in str(v) else f"{f:.4f}"


def _table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _forest(pairs: list[dict[str, Any]]) -> bytes | None:
    """Paired differences with 95% intervals, one row per (method, shots, test)."""
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, means, halves = [], [], []
    for p in pairs:
        extra = "".join(f", {k}={p[k]}" for k in ("shots", "test") if p.get(k) not in (None, "", "test"))
        labels.append(f"{p['method']} - {p['baseline']}{extra}")
        means.append(float(p["mean_difference"]))
        halves.append(float(p["ci95"]))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    y = list(range(len(labels)))[::-1]
    for yi, m, h in zip(y, means, halves, strict=True):
        color = "#2f9e44" if m - h > 0 else "#e03131" if m + h < 0 else "#495057"
        ax.errorbar([m], [yi], xerr=[h], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="#868e96", lw=1, ls="--")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("accuracy difference (95% CI)")
    return _png(fig)


def _curves(rows: list[dict[str, Any]]) -> bytes | None:
    """Split runs: accuracy (mean over seeds, min-max band) against shots, per method."""
    own = [r for r in rows if r.get("test", "test") == "test" and "shots" in r and "split_seed" in r]
    shots = sorted({r["shots"] for r in own})
    if len(shots) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in dict.fromkeys(r["method"] for r in own):
        mean, lo, hi = [], [], []
        for k in shots:
            vals = [r["accuracy"] for r in own if r["method"] == m and r["shots"] == k]
            mean.append(sum(vals) / len(vals) if vals else float("nan"))
            lo.append(min(vals) if vals else float("nan"))
            hi.append(max(vals) if vals else float("nan"))
        ax.plot(shots, mean, marker="o", label=m)
        ax.fill_between(shots, lo, hi, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _png(fig)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from what the run wrote there; returns its path.

    Raises:
        FileNotFoundError: ``run_dir`` holds no ``run.json`` (not a run folder).
    """
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no run.json, so not a focusshot run folder")
    info = json.loads(info_path.read_text())
    cfg = info.get("config", {})
    rows = read_results(run_dir) if results_file(run_dir) else []  # results.jsonl or .jsonl.gz
    summary, pairs = _csv(run_dir / "summary.csv"), _csv(run_dir / "paired.csv")
    parts = [f"<h1>focusshot run: {html.escape(run_dir.name)}</h1>"]
    ident = info.get("backbone", {})
    methods = cfg.get("methods", [])
    name, source = html.escape(str(ident.get("name", "?"))), html.escape(str(ident.get("source", "")))
    sha = html.escape(str(ident.get("weights_sha256", ""))[:16])
    parts.append(
        f"<p>{html.escape(info.get('protocol', '?'))} protocol; backbone <b>{name}</b> ({source}; weights"
        f" sha256 <code>{sha}</code>); methods: {html.escape(', '.join(methods))}.</p>"
    )
    parts.append("<h2>Summary</h2>" + _table(summary))
    forest = _forest(pairs)
    if pairs:
        parts.append("<h2>Paired differences</h2>")
        if forest:
            parts.append(_img(forest, "forest plot of paired differences"))
        parts.append(_table(pairs))
    from focusshot.report.roc import roc_figure

    roc = roc_figure(rows)
    if roc is not None:
        parts.append(
            "<h2>Known against unknown (open set)</h2>"
            + _img(_png(roc), "ROC curves of known against unknown queries per method and score")
        )
    curves = _curves(rows)
    if curves:
        parts.append("<h2>Accuracy against shots</h2>" + _img(curves, "accuracy against shots per method"))
    if (run_dir / "reliability.png").is_file():
        parts.append(
            "<h2>Calibration</h2>" + _img((run_dir / "reliability.png").read_bytes(), "reliability diagrams")
        )
        parts.append(_table(_csv(run_dir / "reliability.csv")))
    att = (
        json.loads((run_dir / "attention.json").read_text()) if (run_dir / "attention.json").is_file() else {}
    )
    figures = [
        (name, alt)
        for name, alt in (
            ("attention_maps.png", "attention maps"),
            ("attention_methods.png", "attention after adapting"),
            ("explain_maps.png", "what each method's prediction rests on (relevance maps)"),
        )
        if (run_dir / name).is_file()
    ]
    if att.get("available") or figures:  # explain_maps.png needs no [CLS] row nor target masks
        parts.append("<h2>Where the model looks</h2>")
    if att.get("available"):
        mass, area = att["cls_target_mass"], att.get("target_area", float("nan"))
        parts.append(
            f"<p>Frozen backbone: last-layer [CLS] attention puts {mass:.3f} of its patch mass on the"
            f" target (chance {area:.3f}).</p>"
        )
    for name, alt in figures:
        parts.append(_img((run_dir / name).read_bytes(), alt))
    left_out = (att.get("explain") or {}).get("left_out") or {}
    if left_out and (run_dir / "explain_maps.png").is_file():
        parts.append(
            '<p class="muted">Relevance maps left out: '
            + "; ".join(f"{html.escape(m)} ({html.escape(str(why))})" for m, why in left_out.items())
            + ".</p>"
        )
    if att.get("available") and att.get("methods"):
        parts.append(_table([{"method": m, **v} for m, v in att["methods"].items()]))
    for auto in sorted(run_dir.glob("*.auto.json")):
        rep = json.loads(auto.read_text())
        parts.append(f"<h2>fit --method auto ({html.escape(auto.name)})</h2>")
        parts.append(f"<p>Chose <b>{html.escape(rep['method'])}</b>: {html.escape(rep['reason'])}</p>")
        parts.append(_table(rep.get("candidates", [])))
    parts.append(
        "<h2>Configuration and versions</h2><details><summary>run.json</summary><pre>"
        + html.escape(json.dumps(info, indent=2)[:20000])
        + "</pre></details>"
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>focusshot report: {html.escape(run_dir.name)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
