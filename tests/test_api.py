"""The public plugin API (ddpm_kit.api) and its documentation stay one: every public name is
documented in docs/writing-a-plugin.md, every name the page's API table lists exists, and the
plugin packages shipped here use nothing else of ddpm_kit."""

import ast
import re
from pathlib import Path

import ddpm_kit.api as api

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "writing-a-plugin.md"


def api_table_names() -> set[str]:
    """The names in the first column of the page's table of the public API."""
    text = DOC.read_text()
    section = text.split("## The public API", 1)[1].split("\n## ", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `([A-Za-z_][A-Za-z0-9_]*)", section, flags=re.M)}


def test_every_public_name_is_documented_and_every_documented_name_exists():
    documented = api_table_names()
    public = set(api.__all__) - {"__version__"}
    assert public - documented == set(), "public but undocumented"
    assert documented - public == set(), "documented but gone from ddpm_kit.api"
    for name in public:
        assert getattr(api, name) is not None


def test_plugin_packages_import_only_the_public_api():
    sources = [p for folder in ("plugins", "examples/plugins") for p in (ROOT / folder).glob("*/ddpm_kit_*/**/*.py")]
    assert len(sources) >= 10
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpm_kit"):
                assert node.module == "ddpm_kit.api", f"{path}: from {node.module} import ..."
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("ddpm_kit.") or alias.name == "ddpm_kit.api", f"{path}: {alias.name}"
