"""Commands that cannot go stale: every ``focusshot ...`` command in a fenced code block of the README
or a docs page is parsed by the real argument parser (an unknown sub-command or flag, a misspelt or
abbreviated one, or a value the parser refuses fails, naming the page and line), and the README's
quickstart and the first command of each tutorial run end to end at a tiny size.

Pages are found by globbing (``README.md``, ``docs/**/*.md``), so new and renamed pages are checked
without a change here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from focusshot.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "shell-session", "zsh"}
OPERATORS = {"&&", "||", "|", ";", "&", "(", ")"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    page: str  # relative to the checkout
    line: int  # 1-based line of the command's first line
    block: int  # index of its fenced block on the page
    text: str  # as written (continuations joined)
    args: tuple[str, ...]  # what follows ``focusshot``

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    found = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [p for p in found if p.is_file() and "_build" not in p.relative_to(ROOT).parts]


def fenced_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """``(first line number, info string, lines)`` of every fenced code block (``` or ~~~)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append((i + 2, info.strip(), body))
        i = j + 1
    return out


def _language(info: str) -> str | None:
    """The shell language of a block's info string; ``None`` for a block that is not shell."""
    m = re.match(r"^\{(code-block|code|sourcecode)\}\s*(\S*)", info)
    if m:
        return m.group(2).lower()
    if info.startswith("{"):
        return None  # a directive (method-options, toctree, eval-rst, ...)
    return info.split()[0].lower() if info else ""


def logical_lines(body: list[str], first: int) -> list[tuple[int, str]]:
    """Lines with their ``\\`` continuations joined and ``$ `` prompts removed, each with its number."""
    out: list[tuple[int, str]] = []
    buf, start = "", first
    for k, raw in enumerate(body):
        line = raw.rstrip()
        if not buf:
            start = first + k
            line = re.sub(r"^\s*\$\s+", "", line)
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def focusshot_args(line: str) -> list[tuple[str, ...]]:
    """The arguments of every ``focusshot`` command on a shell line: ``focusshot ...``,
    ``python -m focusshot ...``, ``torchrun ... -m focusshot ...``, after ``VAR=x`` assignments,
    in pipelines and ``&&`` chains; ``#`` comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote: not a command line (e.g. a heredoc body)
        return []
    simple: list[list[str]] = [[]]
    for tok in tokens:
        if tok in OPERATORS:
            simple.append([])
        else:
            simple[-1].append(tok)
    found = []
    for words in simple:
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words and words[0] == "focusshot":
            found.append(tuple(words[1:]))
            continue
        for k in range(len(words) - 1):
            if words[k] == "-m" and words[k + 1] == "focusshot":
                found.append(tuple(words[k + 2 :]))
                break
    return found


def collect() -> list[Command]:
    out = []
    for page in pages():
        rel = str(page.relative_to(ROOT))
        for b, (first, info, body) in enumerate(fenced_blocks(page.read_text())):
            if _language(info) not in SHELL_LANGUAGES:
                continue
            for number, line in logical_lines(body, first):
                for args in focusshot_args(line):
                    out.append(Command(rel, number, b, line.strip(), args))
    return out


def _subparser(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> list[argparse.ArgumentParser]:
    """``parser`` and the sub-command parsers the namespace went through."""
    chain = [parser]
    while True:
        subs = [a for a in chain[-1]._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or getattr(ns, subs[0].dest, None) is None:
            return chain
        chain.append(subs[0].choices[getattr(ns, subs[0].dest)])


def parse(args: tuple[str, ...]) -> str | None:
    """Why the real parser refuses ``args`` (``None``: it accepts them). Abbreviated long options,
    which argparse accepts by prefix, are refused too: a page spells every flag out."""
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns = parser.parse_args(list(args))
    except SystemExit as exc:
        if exc.code == 0 and ("--help" in args or "-h" in args or "--version" in args):
            return None
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    known = {s for p in _subparser(parser, ns) for a in p._actions for s in a.option_strings}
    for tok in args:
        if tok == "--":
            break
        if tok.startswith("--") and tok.split("=", 1)[0] not in known:
            return f"{tok.split('=', 1)[0]} is not a flag of this command (an abbreviation?)"
    return _methods_and_options(ns)


def _methods_and_options(ns: argparse.Namespace) -> str | None:
    """Why ``--method`` or a ``--set METHOD.OPTION=VALUE`` names no registered method, group or
    option (the parser takes them as plain text; ``evaluate`` and ``fit`` would refuse them)."""
    from focusshot.methods.base import method_class, method_groups, option_help
    from focusshot.options import parse_setting

    groups = set(method_groups()) | ({"auto"} if ns.command == "fit" else set())
    for name in (m.strip() for m in (getattr(ns, "method", None) or "").split(",")):
        if name and name not in groups and name != "...":
            try:
                method_class(name)
            except (KeyError, ValueError) as exc:
                return f"--method {name}: {exc}"
    for text in getattr(ns, "set", None) or []:
        try:
            method, option, _ = parse_setting(text)
            names = {o for o, _, _ in option_help(method_class(method).Options)}
        except (KeyError, ValueError) as exc:
            return f"--set {text}: {exc}"
        if option not in names:
            return f"--set {text}: {method} has no option {option!r} (it has {sorted(names)})"
    return None


COMMANDS = collect()


def test_the_pages_hold_focusshot_commands() -> None:
    pages_with = {c.page for c in COMMANDS}
    assert "README.md" in pages_with and len(COMMANDS) >= 10, sorted(pages_with)


def test_every_command_on_a_page_parses_with_the_real_parser() -> None:
    bad = [f"{c.where}: `{c.text}`: {why}" for c in COMMANDS if (why := parse(c.args))]
    assert not bad, "commands the CLI refuses:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("focusshot evaluate --data x  # a comment", [("evaluate", "--data", "x")]),
        ("OMP_NUM_THREADS=1 python -m focusshot methods | less", [("methods",)]),
        (
            "torchrun --standalone --nproc-per-node 8 -m focusshot evaluate --device auto",
            [("evaluate", "--device", "auto")],
        ),
        ("cd x && focusshot report runs/a; focusshot backbones", [("report", "runs/a"), ("backbones",)]),
        ("git clone repo focusshot && cd focusshot && pip install -e .", []),
        (
            'focusshot evaluate --data "world:single?split=1&per_class=60"',
            [("evaluate", "--data", "world:single?split=1&per_class=60")],
        ),
    ],
)
def test_commands_are_found_in_shell_lines(line: str, expected: list[tuple[str, ...]]) -> None:
    assert focusshot_args(line) == expected


def test_blocks_continuations_and_prompts() -> None:
    text = "x\n```bash\n$ focusshot evaluate --backbone a \\\n    --data b  # c\n```\n```{toctree}\n```\n"
    (first, info, body), _ = fenced_blocks(text)
    assert (first, info) == (3, "bash")
    assert logical_lines(body, first) == [(3, "focusshot evaluate --backbone a      --data b  # c")]


EVALUATE = ("evaluate", "--backbone", "a", "--data", "b")
FIT = ("fit", "x", "--backbone", "a", "--output", "o")


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (EVALUATE, None),
        ((*EVALUATE, "--nope"), "unrecognized arguments: --nope"),
        (("evalute",), "invalid choice"),
        ((*EVALUATE, "--epi", "2"), "abbreviation"),
        ((*EVALUATE, "--method", "protonett"), "--method protonett"),
        ((*FIT, "--set", "lora.rnk=8"), "no option 'rnk'"),
        ((*FIT, "--method", "auto", "--set", "lora+fort.rank=8"), None),
    ],
)
def test_what_the_parse_check_refuses(args: tuple[str, ...], why: str | None) -> None:
    got = parse(args)
    assert got is None if why is None else why in (got or ""), got


# ---- end to end, at a tiny size -----------------------------------------------------------------

TINY = {"--episodes": "2", "--queries": "2", "--shots": "1", "--ways": "3", "--seeds": "1", "--steps": "2"}
WORLD_PER_CLASS = 3  # images per class of a FocusWorld suite in a tiny run (30 by default)


def _tiny_data(spec: str) -> str:
    """A ``world:SUITE[?options]`` spec with at most ``WORLD_PER_CLASS`` images per class; any
    other source as it is."""
    if not spec.startswith("world:"):
        return spec
    if "per_class=" in spec:
        return re.sub(
            r"per_class=(\d+)", lambda m: f"per_class={min(int(m.group(1)), WORLD_PER_CLASS)}", spec
        )
    return f"{spec}{'&' if '?' in spec else '?'}per_class={WORLD_PER_CLASS}"


def tiny(args: tuple[str, ...], out: Path) -> list[str]:
    """``args`` at a tiny size: few episodes, queries, seeds and FocusWorld images, no progress
    bars, and every ``--output`` under ``out``."""
    res, i = [], 0
    while i < len(args):
        tok = args[i]
        name, eq, value = tok.partition("=")
        if name in TINY or name in ("--output", "--data", "--test-data"):
            given = value if eq else args[i + 1]
            if name == "--output":
                new = str(out / Path(given).name)
            elif name in TINY:
                new = TINY[name]
            else:
                new = _tiny_data(given)
            res += [name, new]
            i += 1 if eq else 2
            continue
        res.append(tok)
        i += 1
    if args and args[0] == "evaluate":  # sizes the command leaves at their defaults
        given = {a.partition("=")[0] for a in res}
        for name in ("--episodes", "--queries", "--seeds"):
            if name not in given:
                res += [name, TINY[name]]
    if args and args[0] in ("evaluate", "fit", "embed", "predict", "explain") and "--quiet" not in res:
        res.append("--quiet")
    return res


def test_tiny_rewrites_sizes_outputs_and_world_data(tmp_path) -> None:
    args = ("evaluate", "--data", "world:clutter", "--episodes", "200", "--output=runs/main", "--shots", "2")
    assert tiny(args, tmp_path) == [
        "evaluate", "--data", f"world:clutter?per_class={WORLD_PER_CLASS}", "--episodes", "2",
        "--output", str(tmp_path / "main"), "--shots", "1", "--queries", "2", "--seeds", "1", "--quiet",
    ]  # fmt: skip
    assert _tiny_data("world:single?split=1") == f"world:single?split=1&per_class={WORLD_PER_CLASS}"
    assert (
        _tiny_data("world:clutter?per_class=12&seed=1") == f"world:clutter?per_class={WORLD_PER_CLASS}&seed=1"
    )
    assert _tiny_data("my_photos/") == "my_photos/"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One FocusShot cache (rendered FocusWorld images, features) for every run of this module."""
    return tmp_path_factory.mktemp("focusshot_cache")


def _run(cmd: Command, tmp_path: Path, monkeypatch, cache: Path) -> None:
    from focusshot.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FOCUSSHOT_CACHE", str(cache))
    argv = tiny(cmd.args, tmp_path / "out")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, f"{cmd.where}: `focusshot {' '.join(argv)}` exited {code}: {err.getvalue()[-2000:]}"


def quickstart() -> Command:
    """The README's first ``focusshot evaluate`` command (its command 1)."""
    return next(c for c in COMMANDS if c.page == "README.md" and c.args[:1] == ("evaluate",))


def test_readme_quickstart_runs_at_a_tiny_size(tmp_path, monkeypatch, shared_cache) -> None:
    cmd = quickstart()
    _run(cmd, tmp_path, monkeypatch, shared_cache)
    out = tmp_path / "out" / Path(cmd.args[cmd.args.index("--output") + 1]).name
    assert (out / "summary.md").is_file() and (out / "results.jsonl").is_file()


def tutorial_commands() -> list[Command]:
    """The first command of the first block holding one, on each tutorial page."""
    firsts: dict[str, Command] = {}
    for c in COMMANDS:
        if "tutorial" in c.page.split("/")[1:-1] or "tutorials" in c.page.split("/")[1:-1]:
            firsts.setdefault(c.page, c)
    return list(firsts.values())


@pytest.mark.parametrize("cmd", tutorial_commands() or [None], ids=lambda c: c.page if c else "none")
def test_each_tutorial_s_first_command_runs_at_a_tiny_size(cmd, tmp_path, monkeypatch, shared_cache) -> None:
    if cmd is None:
        pytest.skip("no tutorial pages with a focusshot command under docs/tutorials/ yet")
    _run(cmd, tmp_path, monkeypatch, shared_cache)
