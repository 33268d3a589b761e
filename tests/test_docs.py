"""The documentation's links and pictures point at files that exist, and the pages describe the
product as it is.

- Every relative link and image in README.md, docs/ and the plugin packages' READMEs, parsed as
  Markdown (so code blocks and inline code are not mistaken for links), names a file that exists.
- The user pages (README.md, every page under docs/ outside docs/results/, the plugin packages'
  and the example plugins' READMEs) cite no issue of the project's tracker (which is not in the
  repository), no file outside the repository, and carry no dated measurement: figures live on the
  dated pages of docs/results/ and the user pages link to them.
- Every dated page of docs/results/ says when, on what machine, at which commit and with which
  command its figures were measured.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
PLUGIN_READMES = [*(ROOT / "plugins").glob("*/README.md"), *(ROOT / "examples" / "plugins").glob("**/README.md")]
# The dated measurement pages: docs/results/*.md and docs/results/<folder>/README.md. The report.md
# files beside them are written by `ddpm-kit report` and are not checked here.
RESULT_PAGES = sorted([*RESULTS.glob("*.md"), *RESULTS.glob("*/README.md")])
USER_PAGES = sorted([ROOT / "README.md", *(p for p in DOCS.rglob("*.md") if RESULTS not in p.parents),
                     *PLUGIN_READMES])
PAGES = sorted({ROOT / "README.md", *DOCS.glob("*.md"), *PLUGIN_READMES, *RESULT_PAGES})
# This file names the forbidden forms on purpose (to test the patterns), so it is left out.
TEST_FILES = sorted(p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name)

# An issue of the project's tracker: "issue 15", "issues 14 and 15", "Issue #24", or "#15" / "(#15)"
# on its own. A public upstream thread named with its repository ("pytorch/pytorch#191306",
# "openai/improved-diffusion#33") is a citation anyone can follow and is allowed.
ISSUE_WORD = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
HASH_NUMBER = re.compile(r"(?<![\w&])#\d+\b")
UPSTREAM_REPO = re.compile(r"[\w.-]+/[\w.-]+$")
# A file or folder outside the repository: the task brief a session was given, a shared folder
# beside the checkout. "/shared/scratch" in a path example is not a citation (preceded by "/").
OUTSIDE_FILE = re.compile(r"(?-i:BRIEF)|\bthe brief\b|\.\./shared\b|(?<![\w/.~-])shared/", re.IGNORECASE)
# A date as the results pages write it.
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
SHORT_HASH = re.compile(r"\b[0-9a-f]{7,40}\b")


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


def prose(markdown: str) -> list[tuple[int, str]]:
    """(line number, text) of a page's running text: code blocks, inline code, HTML and link
    targets left out, so a file name such as pt_inception-2015-12-05-6726825d.pth in code, or a link
    to a results page named by its date, is not taken for a dated measurement."""
    lines = []
    for block in MarkdownIt("commonmark").parse(markdown):
        if block.type != "inline" or not block.map:
            continue
        line, text = block.map[0] + 1, ""
        for child in block.children or []:
            if child.type == "text":
                text += child.content
            elif child.type in ("softbreak", "hardbreak"):
                lines.append((line, text))
                line, text = line + 1, ""
        lines.append((line, text))
    return [(line, text) for line, text in lines if text]


def issue_references(text: str) -> list[tuple[int, str]]:
    """(offset, text) of each reference to an issue of the project's tracker."""
    found = [(m.start(), m.group(0)) for m in ISSUE_WORD.finditer(text)]
    found += [(m.start(), m.group(0)) for m in HASH_NUMBER.finditer(text)
              if not UPSTREAM_REPO.search(text[:m.start()])]
    return sorted(found)


def outside_files(text: str) -> list[tuple[int, str]]:
    """(offset, text) of each citation of a file outside the repository."""
    return [(m.start(), m.group(0)) for m in OUTSIDE_FILE.finditer(text)]


def violations(path: Path, rules) -> list[str]:
    """'file:line: what' for each hit of `rules` (text -> [(offset, hit)]) in the file's whole text,
    so a reference broken across two lines is found too."""
    text = path.read_text()
    hits = sorted(hit for rule in rules for hit in rule(text))
    return [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}: {hit!r}" for offset, hit in hits]


def header(page: Path) -> str:
    """The page's opening: everything before its first '## ' section (at most 25 lines)."""
    lines = page.read_text().splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return "\n".join(lines[:min(end, 25)])


def test_the_pages_are_found_and_link_to_pictures():
    assert len(PAGES) >= 15, [p.name for p in PAGES]
    images = [t for page in PAGES for t in local_targets(page) if t.endswith(".png")]
    assert len(images) >= 10, images  # the parser sees the pages' pictures, so the check below bites
    assert len(USER_PAGES) >= 20 and len(RESULT_PAGES) >= 5, (USER_PAGES, RESULT_PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_picture_exists(page):
    missing = [t for t in local_targets(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_rules_recognise_what_they_are_for():
    """The patterns below bite on the forms they are meant to catch and let the allowed ones pass."""
    def hits(rule, text):
        return [hit for _, hit in rule(text)]

    assert hits(issue_references, "the quickstart before issue\n15") == ["issue\n15"]
    assert hits(issue_references, "Issues 14 and 15; fixed (#24)") == ["Issues 14", "#24"]
    assert hits(issue_references, "see pytorch/pytorch#191306 and openai/improved-diffusion#33") == []
    assert hits(issue_references, "&#215; ## Heading, step 3") == []
    assert hits(outside_files, "as BRIEF.md says; the brief's 0.19630") == ["BRIEF", "the brief"]
    assert hits(outside_files, "see ../shared/notes, in shared/results.md") == ["../shared", "shared/"]
    assert hits(outside_files, "STORE=/shared/scratch/ddpm; shared by all; briefly trained") == []
    page = ("Measured 2026-11-24: 7 min.\n\n```bash\nls weights-2015-12-05.pth\n```\n\n"
            "The file `pt_inception-2015-12-05-6726825d.pth`; [results](results/2026-12-03-sweep.md).\n")
    assert [(line, m.group(0)) for line, text in prose(page) for m in DATE.finditer(text)] == [(1, "2026-11-24")]


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_cite_no_tracker_issue_and_no_file_outside_the_repository(page):
    """An issue number means nothing to a reader without the tracker, and a file outside the
    repository cannot be opened: cite papers and public repositories (owner/name#N) instead."""
    found = violations(page, [issue_references, outside_files])
    assert not found, "\n".join(found)


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_carry_no_dated_measurement(page):
    """A date in a user page's running text is a measurement (or a history) that belongs on a dated
    page of docs/results/, which the user page links to. Dates inside code blocks and inline code
    (file names, commands) and inside link targets (a results page named by its date) are allowed."""
    found = [f"{page.relative_to(ROOT)}:{line}: {m.group(0)} in {text[:80]!r}"
             for line, text in prose(page.read_text()) for m in DATE.finditer(text)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("page", RESULT_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_results_page_says_when_where_at_which_commit_and_how(page):
    """A results page opens (before its first '## ' section) with the date of the measurement, the
    machine (a 'Machine:' line), the commit (a 'Commit:' line with a short hash) and the command that
    regenerates it (a 'Command:' or 'Regenerate:' line with the command in backticks)."""
    head = header(page)
    first = "\n".join(head.splitlines()[:4])
    assert DATE.search(first), f"{page.relative_to(ROOT)} does not start with the date it was measured"
    assert re.search(r"^\W*Machine\W*:\s*\S", head, re.MULTILINE), f"{page.relative_to(ROOT)} names no machine"
    commit = re.search(r"^\W*Commit\W*:(.*)$", head, re.MULTILINE)
    assert commit and SHORT_HASH.search(commit.group(1)), f"{page.relative_to(ROOT)} names no commit"
    assert re.search(r"^\W*(Command|Regenerate)\W*:.*`[^`]+`", head, re.MULTILINE), \
        f"{page.relative_to(ROOT)} gives no command that regenerates it"


@pytest.mark.parametrize("page", RESULT_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_results_page_is_linked_from_a_user_page(page):
    linked = {(user.parent / t).resolve() for user in USER_PAGES for t in local_targets(user)}
    assert page.resolve() in linked or (page.name == "README.md" and page.parent.resolve() in linked), \
        f"no user page links to {page.relative_to(ROOT)}"


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_the_tests_cite_no_tracker_issue_and_no_file_outside_the_repository(path):
    """The same rule for the tests' text (docstrings, comments, names)."""
    found = violations(path, [issue_references, outside_files])
    assert not found, "\n".join(found)


TEST_SOURCES = sorted({*(ROOT / "tests").rglob("test_*.py"), *(ROOT / "plugins").rglob("test_*.py"),
                       *(ROOT / "examples").rglob("test_*.py")})
TEST_NAMES = {name for path in TEST_SOURCES for name in re.findall(r"def (test_\w+)", path.read_text())}
CITED_TEST = re.compile(r"\b(test_\w+?)(\.py)?(?:::(test_\w+))?\b")


def dangling_tests(text: str) -> list[tuple[int, str]]:
    """(offset, text) of each test file, test function or file::function a page cites that does not
    exist (a renamed or moved test leaves its citation behind)."""
    found = []
    for m in CITED_TEST.finditer(text):
        stem, dotpy, function = m.groups()
        files = [p for p in TEST_SOURCES if p.stem == stem]
        if function:
            ok = any(f"def {function}(" in p.read_text() for p in files)
        else:
            ok = bool(files) or (not dotpy and stem in TEST_NAMES)
        if not ok:
            found.append((m.start(), m.group(0)))
    return found


def test_the_test_rule_recognises_what_it_is_for():
    assert [hit for _, hit in dangling_tests("`test_samplers.py::test_sampling_distinguishes_the_two_variances`")] == []
    assert [hit for _, hit in dangling_tests("`test_oracle.py::test_sampling_distinguishes_the_two_variances`")] \
        == ["test_oracle.py::test_sampling_distinguishes_the_two_variances"]
    assert [hit for _, hit in dangling_tests("tests/test_schedulers.py and test_no_such_thing")] \
        == ["test_schedulers.py", "test_no_such_thing"]


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_a_user_page_cites_exists(page):
    found = violations(page, [dangling_tests])
    assert not found, "\n".join(found)


def test_the_documented_slurm_job_script_is_the_one_the_slurm_tests_run():
    """docs/training.md shows scripts/slurm/train.sbatch as it is (tests/test_slurm.py runs the file)."""
    script = (ROOT / "scripts" / "slurm" / "train.sbatch").read_text()
    assert f"```bash\n{script}```" in (DOCS / "training.md").read_text()
