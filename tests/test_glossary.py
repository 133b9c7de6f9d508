"""One word, one meaning: the retired spellings of docs/ARCHITECTURE.md's glossary appear nowhere in the
code, flags, docs, templates and pages but in the hidden aliases that keep old command lines working."""
from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT

# Lines allowed to hold a retired spelling: the hidden aliases (build.py marks them "before the
# glossary"), the tests of those aliases, and FORMAT.md's version history, which says what changed.
ALLOWED = re.compile(r"before the glossary|hidden alias|^\| 1\.\d+ \|")


def glossary() -> dict[str, list[str]]:
    """{word: [retired spellings]} from the glossary table (backticked items of its last column)."""
    text = (ROOT / "docs/ARCHITECTURE.md").read_text(encoding="utf-8").split("## Glossary", 1)[1]
    words = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("**"):
            words[cells[0].strip("*")] = re.findall(r"`([^`]+)`", cells[2])
    return words


def tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if name.startswith("shared/") or name == "docs/ARCHITECTURE.md" or name == "tests/test_glossary.py" \
                or not name.endswith((".py", ".md", ".html", ".js", ".css", ".sh", ".toml", ".txt", ".cff")) \
                or not (ROOT / name).is_file():   # removed in the working tree, not yet in a commit
            continue
        yield name, (ROOT / name).read_text(encoding="utf-8", errors="replace")


def test_the_glossary_names_every_word_the_issue_asks_for():
    words = glossary()
    assert {"unit", "layer", "site", "shard", "part", "picture", "recipe", "preset", "atlas", "probe", "website",
            "share"} <= set(words)
    assert words["shard"] and words["part"] and words["site"]   # retired spellings listed, so the check below bites


def test_no_retired_spelling_is_left():
    retired = [(word, spelling) for word, spellings in glossary().items() for spelling in spellings]
    found = []
    for name, text in tracked_text_files():
        for number, line in enumerate(text.splitlines(), 1):
            if ALLOWED.search(line):
                continue
            for word, spelling in retired:
                if re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", line, re.I if " " in spelling else 0):
                    found.append(f"{name}:{number}: {spelling!r} (glossary: {word})")
    assert not found, "\n".join(found)


def test_help_shows_the_new_flags_and_hides_the_old(capsys):
    import build
    texts = []
    for command in ("run", "plan", "render"):
        try:
            build.main([command, "--help"])
        except SystemExit as e:
            assert e.code == 0
        texts.append(capsys.readouterr().out)
    run, plan, render = texts
    assert "--share-index" in run and "--num-shares" in plan and "--shard-index" not in run + plan
    assert "--out" in render and "--site" not in render
