"""Documentation and packaging: the site builds with --strict (a broken link or API reference fails), every
docstring page it references exists, and the package says who it is (--version, python -m, LICENSE, ...)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import slowsde_jax
from slowsde_jax import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "engines" / "index.html").read_text()
    assert "simulate_discrete" in api and "simulate_slow_sde" in api  # mkdocstrings rendered the docstrings
    assert (tmp_path / "site" / "math" / "index.html").exists()


def test_no_citation_of_an_external_specification():
    """The docs are in the repository: no "math §N" pointing to a text the user does not have."""
    files = [ROOT / "README.md", *sorted((ROOT / "slowsde_jax").glob("*.py")), *sorted((ROOT / "docs").rglob("*.md")),
             ROOT / "slowsde_jax" / "default_config.yaml"]
    hits = [f"{p.relative_to(ROOT)}:{i + 1}" for p in files for i, line in enumerate(p.read_text().splitlines())
            if re.search(r"math §\d", line)]
    assert not hits, hits


def test_doc_links_in_docstrings_point_to_existing_sections():
    """Docstrings cite docs/math.md#anchor; every anchor must be a heading of docs/math.md."""
    math = (ROOT / "docs" / "math.md").read_text()
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", math, flags=re.M)}
    cited = set()
    for p in [ROOT / "README.md", *(ROOT / "slowsde_jax").glob("*.py")]:
        cited |= set(re.findall(r"docs/math\.md#([\w\-]+)", p.read_text()))
    assert cited, "nothing cites docs/math.md"
    assert cited <= anchors, sorted(cited - anchors)


def test_version_help_and_module_entry_point(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"slowsde {slowsde_jax.__version__}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "slowsde run" in out and "slowsde compare" in out
    r = subprocess.run([sys.executable, "-m", "slowsde_jax", "--version"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"slowsde {slowsde_jax.__version__}"


def test_packaging_files():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == slowsde_jax.__version__
    assert "arXiv:2511.02773" in str(cff["preferred-citation"])
    assert (ROOT / "slowsde_jax" / "py.typed").exists()
    assert "py.typed" in (ROOT / "pyproject.toml").read_text()
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
    assert (ROOT / "configs" / "default.yaml").read_text() == (ROOT / "slowsde_jax" / "default_config.yaml").read_text()
