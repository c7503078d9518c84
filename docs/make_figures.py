"""Run the documentation's code and write its figures into ``docs/img/``.

Every ```` ```python ```` block of a page runs in order in one namespace per
page, exactly as a reader would run it.  Each matplotlib figure the code
creates is named by its label (``plt.subplots(..., num="vae-digits")``) and
saved as ``docs/img/<label>.png``.

A ```` ```text title="Output" ```` block right after a code block is what that
code prints; any other ``title="Output ..."`` marks printed numbers that vary
between machines (training logs).  ``--write-outputs`` replaces every such
block with what this run printed, so that the pages show real output.

    python docs/make_figures.py                   # all pages, figures only
    python docs/make_figures.py --write-outputs   # also refresh the printed output
    python docs/make_figures.py tutorials/refusals.md

The tests (``tests/test_docs.py``) use the same functions with fewer
training steps and without writing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parent
IMG = DOCS / "img"

# Pages whose code runs, in the order of the navigation.
PAGES = (
    "index.md",
    "tutorials/first-expression.md",
    "tutorials/divergence-triangle.md",
    "tutorials/refusals.md",
    "tutorials/latent-ebm.md",
    "tutorials/bidvl.md",
    "tutorials/mcmc-teaching.md",
    "tutorials/custom-density.md",
    "tutorials/discrete-latents.md",
    "tutorials/latent-prior-ebm.md",
)

_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_STEPS = re.compile(r"^STEPS = \d+(?P<rest>.*)$", re.MULTILINE)


@dataclass
class Block:
    """One ```python block of a page and the ```text block that shows its output."""

    code: str
    line: int  # 1-based line of the opening fence
    output: str | None = None  # the output block's text, if the page shows one
    output_span: tuple[int, int] | None = None  # character span of the output block's body
    checked: bool = True  # title="Output": compared exactly with the real output
    printed: str = field(default="", repr=False)  # what running it printed


def blocks(text: str) -> list[Block]:
    """The python blocks of a page, each with the output block that follows it."""
    found: list[Block] = []
    previous_end = 0
    for m in _FENCE.finditer(text):
        info = m.group("info").strip()
        lang = info.split()[0] if info else ""
        if lang == "python":
            found.append(Block(m.group("body"), text.count("\n", 0, m.start()) + 1))
        elif lang == "text" and 'title="Output' in info and found:
            last = found[-1]
            if last.output is None and not text[previous_end : m.start()].strip():
                last.output = m.group("body")
                last.output_span = m.span("body")
                last.checked = 'title="Output"' in info
        previous_end = m.end()
    return found


def run_page(page: Path, *, steps: int | None = None, figures: Path | None = None) -> list[Block]:
    """Run a page's python blocks in order; return them with what each printed.

    Arguments:
        page: the Markdown file.
        steps: replace the page's ``STEPS = ...`` lines by this value (tests).
        figures: save every figure the page creates into this folder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = blocks(page.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": "__main__"}
    plt.close("all")
    try:
        for block in found:
            code = block.code if steps is None else _STEPS.sub(rf"STEPS = {steps}\g<rest>", block.code)
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*non-interactive.*")
                try:
                    exec(compile(code, f"{page.name}:{block.line}", "exec"), namespace)
                except Exception as err:
                    raise RuntimeError(
                        f"{page.name}, code block at line {block.line} failed: {err}"
                    ) from err
            block.printed = buffer.getvalue()
        if figures is not None:
            figures.mkdir(parents=True, exist_ok=True)
            for num in plt.get_fignums():
                fig = plt.figure(num)
                label = fig.get_label()
                if not label:
                    raise ValueError(f"{page.name}: a figure without a name (give num='...')")
                fig.savefig(figures / f"{label}.png", dpi=110, bbox_inches="tight")
                print(f"  wrote {figures.name}/{label}.png")
    finally:
        plt.close("all")
    return found


def write_outputs(page: Path, found: list[Block]) -> int:
    """Replace the page's output blocks by what the code printed; return how many changed."""
    text = page.read_text(encoding="utf-8")
    changed = 0
    for block in sorted(
        (b for b in found if b.output_span is not None), key=lambda b: -b.output_span[0]
    ):
        if block.printed != block.output:
            start, end = block.output_span
            text = text[:start] + block.printed + text[end:]
            changed += 1
    page.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", help="pages relative to docs/ (default: all)")
    parser.add_argument("--write-outputs", action="store_true", help="refresh the pages' output blocks")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # small networks: one thread is fastest and reproducible
    for name in args.pages or PAGES:
        page = DOCS / name
        start = time.perf_counter()
        print(f"{name}:")
        found = run_page(page, figures=IMG)
        stale = [b.line for b in found if b.output is not None and b.printed != b.output]
        if args.write_outputs:
            print(f"  refreshed {write_outputs(page, found)} output block(s)")
        elif stale:
            print(f"  output differs from the page for the blocks at lines {stale}")
        print(f"  {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
