"""The documents a user reads: every relative link resolves (anchors included), nothing points outside the
repository, and every registered recipe is in the method table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            out.add(slug)
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve_inside_the_repository(doc):
    assert doc.is_file(), doc
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert REPO in file.parents or file == REPO, f"{doc.name} links outside the repository: {target}"
        assert file.exists(), f"{doc.name}: broken link {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{doc.name}: no heading #{anchor} in {file.name}"


def test_every_registered_recipe_is_in_the_method_table():
    from reprlab.recipes import RECIPES

    table = (REPO / "docs" / "METHODS.md").read_text()
    missing = [c for c in RECIPES if f"reprlab {c}" not in table]
    assert not missing, f"recipes missing from docs/METHODS.md: {missing}"


def _readme_commands() -> list[str]:
    """The ``reprlab ...`` lines of the README's shell blocks (continuations joined, comments and ``[optional]``
    parts dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        line = re.sub(r"\s+#.*$", "", line.strip())
        line = re.sub(r"\[[^\]]*\]", "", line).strip()
        if line.startswith("reprlab "):
            out.append(line)
    return out


def test_readme_commands_parse():
    """Every command the README shows is accepted by today's CLI (option names drift; this catches it)."""
    import shlex

    from reprlab.cli import build_parser

    commands = _readme_commands()
    assert len(commands) > 30
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as exc:  # argparse's error path
            raise AssertionError(f"README command does not parse: {command}") from exc
