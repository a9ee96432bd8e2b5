"""The Python examples of the README and of the docs pages run verbatim, in order, in one namespace per page."""
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "```python" in p.read_text())


def run_blocks(page: Path) -> dict:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks, f"{page} has no python block"
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page.name} python block {i + 1}", "exec"), namespace)  # noqa: S102
    return namespace


def test_readme_example_runs_verbatim_and_compares():
    ns = run_blocks(README)
    err = ns["sj"].compare(ns["on_gamma"], ns["ode"], ["v"]).weak_error["v"]
    assert err.shape == (6,) and np.all(np.isfinite(err))
    assert err[0] < 1e-12  # both start at the same point of Gamma


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    assert text.index('pip install -e . && slowsde run') < text.index('pip install -e ".[test]" && pytest') < 400


@pytest.mark.slow
@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.stem for p in DOC_PAGES])
def test_docs_python_examples_run_verbatim(page):
    run_blocks(page)
