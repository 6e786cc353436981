"""The docs are the design: every file path, dotted name and code identifier that CONTRIBUTING.md and
docs/*.md cite in backticks must exist in this checkout (issue 17: the docs had drifted, naming a
`_CATALOGUE_SHAPED` that did not exist). Citations of other projects' files, and the files a recipe
tells the reader to create, are listed below with the reason."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("core", "api", "worker", "service", "launch", "hydra_client", "migrations")

# Not ours, on purpose: STYLE.md cites the public codebases it learns from, METHOD.md the reference
# code; CONTRIBUTING's recipes name the files a contributor creates.
ELSEWHERE = {
    ("STYLE.md", "api/routes/items.py"),  # fastapi/full-stack-fastapi-template
    ("STYLE.md", "CurrentUser"),  # the same template's dependency alias
    ("STYLE.md", "timm/layers/std_conv.py"),
    ("STYLE.md", "timm/utils/checkpoint_saver.py"),
    ("STYLE.md", "weight_mask"),  # torch.nn.utils.prune's buffer
    ("STYLE.md", "code/core.py"),  # locuslab/smoothing
    ("STYLE.md", "tests/testcase.py"),  # auto_LiRPA
    ("METHOD.md", "utils/schedules.py"),  # inspire-group/hydra
}
CREATED_BY_A_RECIPE = {
    "core/objectives/fgsm.py",
    "tests/core/objectives/test_objective_fgsm.py",
    "core/pruning/methods/hydra_sam.py",
    "core/robust/suite/noise.py",  # the attack recipe's module (tests/core/robust/test_contributing_attack.py writes it)
}

PATH = re.compile(r"[\w./-]+/[\w.-]+\.(py|md|yaml|yml|toml|js|html|sh|ini|json)")
DOTTED = re.compile(rf"({'|'.join(PACKAGES)})(\.\w+)+")
IDENTIFIER = re.compile(r"_?[A-Za-z]\w{3,}")


def _source_text() -> str:
    """Every source file of ours (the packages, tests, scripts, benchmarks, examples, top-level files)."""
    folders = [ROOT / name for name in (*PACKAGES, "tests", "scripts", "bench", "examples", ".ci")]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()] + [
        p for p in ROOT.iterdir() if p.is_file()
    ]
    keep = {".py", ".js", ".html", ".yaml", ".yml", ".toml", ".sh", ".ini", ".cfg", ""}
    return "\n".join(
        p.read_text(errors="ignore")
        for p in files
        if p.suffix in keep and "__pycache__" not in p.parts and p.resolve() != Path(__file__).resolve()
    )


def _citations() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for match in re.finditer(r"`([^`\n]+)`", doc.read_text()):
            out.append((doc.name, match.group(1).strip()))
    return out


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _missing() -> list[str]:
    text = _source_text()
    missing = []
    for doc, token in _citations():
        if (doc, token) in ELSEWHERE or token in CREATED_BY_A_RECIPE:
            continue
        if PATH.fullmatch(token) and "<" not in token:
            if not (ROOT / token).exists():
                missing.append(f"{doc}: path `{token}`")
        elif DOTTED.fullmatch(token):
            if not _resolves(token):
                missing.append(f"{doc}: dotted name `{token}`")
        elif IDENTIFIER.fullmatch(token) and ("_" in token or re.search(r"[a-z][A-Z]", token) or token.isupper()):
            name = token
            if token.startswith("HYDRA_"):  # a setting: service/settings.py reads HYDRA_<field>
                name = token.removeprefix("HYDRA_").lower()
            if not re.search(rf"\b{re.escape(name)}\b", text):
                missing.append(f"{doc}: name `{token}`")
    return missing


def test_every_cited_path_name_and_identifier_exists():
    missing = _missing()
    assert not missing, "the docs cite what the code does not have:\n" + "\n".join(missing)


def test_the_checker_catches_a_name_that_does_not_exist(tmp_path, monkeypatch):
    doc = tmp_path / "FAKE.md"
    doc.write_text("See `_CATALOGUE_SHAPED` in `core/pipeline/nowhere.py` and `core.pipeline.runner.no_such`.")
    monkeypatch.setitem(globals(), "DOCS", [doc])
    found = _missing()
    assert found == [
        "FAKE.md: name `_CATALOGUE_SHAPED`",
        "FAKE.md: path `core/pipeline/nowhere.py`",
        "FAKE.md: dotted name `core.pipeline.runner.no_such`",
    ]


@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_every_doc_is_linked_from_the_index_or_readme(doc):
    if doc == "index.md":
        return
    linked = (ROOT / "README.md").read_text() + (ROOT / "docs" / "index.md").read_text()
    assert doc in linked
