"""mkdocs hooks (mkdocs.yml): the repository files that docs/ links to become part of the site.

The pages link to the plugin packages and the examples (``../examples/plugins/ddpm-kit-heun``),
which lie outside ``docs/``. ``on_files`` follows every such link (a folder: its README.md), also
from the pages it adds, and adds the files under ``repository/``; ``on_page_markdown`` points each
link at the site's copy. A link to a file that does not exist is left as it is, so
``mkdocs build --strict`` fails on it as on any broken link.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

LINK = re.compile(r"(\]\()([^)#\s:]+)")  # relative targets only: no scheme, no bare anchor
PREFIX = "repository"


def _repository_file(source: Path, link: str, root: Path) -> Path | None:
    """The file of the repository a page at ``source`` links to (a folder: its README.md), if any."""
    path = (source.parent / link).resolve()
    if path.is_dir():
        path = path / "README.md"
    return path if path.is_file() and root in path.parents else None


def _site_path(path: Path, docs: Path, root: Path) -> str:
    """Where a repository file is in the site: docs/ files where they are, others under repository/."""
    if docs in path.parents:
        return path.relative_to(docs).as_posix()
    return f"{PREFIX}/{path.relative_to(root).as_posix()}"


def _source(file: File, docs: Path, root: Path) -> Path:
    if file.src_uri.startswith(f"{PREFIX}/"):
        return root / file.src_uri.removeprefix(f"{PREFIX}/")
    return docs / file.src_uri


def on_files(files, config):
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    pending = [f for f in files.documentation_pages()]
    while pending:
        page = pending.pop()
        source = _source(page, docs, root)
        for link in LINK.findall(source.read_text(encoding="utf-8")):
            target = _repository_file(source, link[1], root)
            if target is None or docs in target.parents:
                continue
            uri = _site_path(target, docs, root)
            if files.get_file_from_path(uri) is None:
                added = File.generated(config, uri, abs_src_path=str(target))
                files.append(added)
                if added.is_documentation_page():
                    pending.append(added)
    return files


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    source = _source(page.file, docs, root)

    def rewrite(match: re.Match) -> str:
        target = _repository_file(source, match.group(2), root)
        if target is None:
            return match.group(0)
        here = posixpath.dirname(page.file.src_uri) or "."
        return match.group(1) + posixpath.relpath(_site_path(target, docs, root), here)

    return LINK.sub(rewrite, markdown)
