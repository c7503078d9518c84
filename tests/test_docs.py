"""The documentation cannot drift from the code.

Every ```python block of every page that runs code executes in order, in one
namespace per page, with the page's ``STEPS = ...`` lowered so that training
takes a moment; each ```text title="Output" block must equal what its code
printed.  Blocks titled "Output (...)" show numbers from a full run and are
only executed.  A last test builds the site with ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEST_STEPS = 5  # training steps per loop when the tutorials run under test


def _load_runner():
    spec = importlib.util.spec_from_file_location("_docs_make_figures", DOCS / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def test_every_page_with_code_is_run():
    """A new page with code must be added to the runner's list (and thus to these tests)."""
    with_code = {
        str(page.relative_to(DOCS))
        for page in DOCS.rglob("*.md")
        if runner.blocks(page.read_text(encoding="utf-8"))
    }
    assert with_code == set(runner.PAGES)


def test_output_blocks_are_parsed():
    text = (
        "```python\nprint(1)\n```\n\n"
        '```text title="Output"\n1\n```\n\n'
        "```python\nx = 2\n```\n\n"
        "```python\nprint(x)\n```\n"
        '```text title="Output (one run)"\n2\n```\n'
    )
    found = runner.blocks(text)
    assert [b.code for b in found] == ["print(1)\n", "x = 2\n", "print(x)\n"]
    assert [(b.output, b.checked) for b in found] == [("1\n", True), (None, True), ("2\n", False)]


@pytest.mark.parametrize("name", runner.PAGES)
def test_page_runs_and_shows_its_real_output(name):
    page = DOCS / name
    found = runner.run_page(page, steps=TEST_STEPS)
    for block in found:
        if block.output is not None and block.checked:
            assert block.printed == block.output, (
                f"{name}: the output shown after the code block at line {block.line} is not "
                "what the code prints; run `python docs/make_figures.py --write-outputs`"
            )
        if block.output is not None:
            assert block.printed, f"{name}: the code block at line {block.line} printed nothing"


def test_images_exist():
    """Every picture a page embeds is there (docs/make_figures.py writes them)."""
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).resolve().is_file(), f"{page.name}: missing {target}"


def test_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed; pip install -e '.[dev]' to build the site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # the site serves its own MathJax: no page loads a script or a stylesheet from the network
    pages = list((tmp_path / "site").rglob("*.html"))
    assert pages
    for page in pages:
        html = page.read_text()
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert not remote, f"{page.relative_to(tmp_path)} loads {remote}"
    assert (tmp_path / "site" / "javascripts" / "vendor" / "mathjax" / "tex-mml-chtml.js").stat().st_size > 100_000
    assert len(list((tmp_path / "site" / "javascripts" / "vendor" / "mathjax").rglob("*.woff"))) > 10
