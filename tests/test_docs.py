"""The documentation's links and pictures point at files that exist: every relative link and image
in README.md, docs/*.md and the plugin packages' READMEs, parsed as Markdown (so code blocks and
inline code are not mistaken for links)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "plugins").glob("*/README.md")])


def local_targets(page: Path) -> list[str]:
    """The page's link and image targets that name a file in this repository (not a URL or an anchor)."""
    targets = []
    for block in MarkdownIt("commonmark").parse(page.read_text()):
        for token in block.children or []:
            if token.type not in ("link_open", "image"):
                continue
            parts = urlsplit(token.attrGet("href" if token.type == "link_open" else "src") or "")
            if not parts.scheme and parts.path:
                targets.append(unquote(parts.path))
    return targets


def test_the_pages_are_found_and_link_to_pictures():
    assert len(PAGES) >= 15, [p.name for p in PAGES]
    images = [t for page in PAGES for t in local_targets(page) if t.endswith(".png")]
    assert len(images) >= 10, images  # the parser sees the pages' pictures, so the check below bites


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_picture_exists(page):
    missing = [t for t in local_targets(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"
