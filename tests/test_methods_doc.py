"""The method reference lives in the repository: docs/METHODS.md.

- no file users get (source, tests, benchmarks, docs, README, Makefile, pyproject.toml) cites the developers'
  specification or design note, which users never see;
- every ``METHODS.md#<anchor>`` citation, anywhere in those files, resolves to an ``<a id="anchor">`` of
  docs/METHODS.md, and so does every in-page link ``(#anchor)`` of docs/METHODS.md;
- contract: every built-in registered name of every registry, every scalar metric and each model-selection
  rule has its ``<group>-<name>`` entry, so a newly registered method without a reference entry fails here;
- anchors are unique.
"""

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "METHODS.md"
SCOPE = ["src", "tests", "benchmarks", "docs", "README.md", "Makefile", "pyproject.toml"]
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".hypothesis"}

# Built from parts so that this file does not match its own patterns.
_SDOC, _DDOC = "SP" + "EC", "DES" + "IGN"
FORBIDDEN = re.compile(rf"\b{_SDOC}\b|\[{_SDOC}\]|{_SDOC}\.md|\b{_DDOC}\b|{_DDOC}\.md")
#: A citation of an entry; ``#loss-NAME`` (a placeholder, as ``shiftkit list`` prints it) is not one.
CITATION = re.compile(r"METHODS\.md#([A-Za-z0-9_\-]+)")
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
IN_PAGE_LINK = re.compile(r"\]\(#([A-Za-z0-9_\-]+)\)")

#: Model-selection rules of ``train.select`` (``last``, ``best:<metric>``).
SELECTION_RULES = ("last", "best")


def _files():
    for entry in SCOPE:
        path = ROOT / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                parts = file.relative_to(ROOT).parts
                if not file.is_file() or any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
                    continue
                yield file


def _texts():
    for file in _files():
        try:
            yield file.relative_to(ROOT).as_posix(), file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (images, weights) cite nothing


def _anchors():
    return ANCHOR.findall(METHODS.read_text(encoding="utf-8"))


def _registries():
    """``(group, registry)`` for every registry whose names need a reference entry."""
    from shiftkit import reproductions  # noqa: F401  (registers every reproduction)
    from shiftkit.data import DATASETS
    from shiftkit.reproductions.reproduction import REPRODUCTIONS
    from shiftkit.losses import LOSSES
    from shiftkit.models import MODELS
    from shiftkit.objectives import OBJECTIVES
    from shiftkit.optim import OPTIMIZERS
    from shiftkit.sampling import SAMPLERS
    from shiftkit.procedures import PROCEDURES
    from shiftkit.weighting import WEIGHTINGS

    return [("loss", LOSSES), ("weighting", WEIGHTINGS), ("sampler", SAMPLERS), ("objective", OBJECTIVES),
            ("optim", OPTIMIZERS), ("data", DATASETS), ("model", MODELS), ("reproduction", REPRODUCTIONS),
            ("procedure", PROCEDURES)]


def _required():
    """Every anchor the contract asks for: ``<group>-<name>`` of each built-in name (a name registered by a
    test or a user's own code, outside the ``shiftkit`` package, needs none), metrics and selection rules."""
    from shiftkit.metrics import SCALAR_METRICS

    wanted = []
    for group, registry in _registries():
        for name in registry.names():
            if getattr(registry.get(name), "__module__", "").startswith("shiftkit."):
                wanted.append(f"{group}-{name}")
    wanted += [f"metric-{m}" for m in SCALAR_METRICS]
    wanted += [f"selection-{rule}" for rule in SELECTION_RULES]
    return wanted


def test_nothing_cites_the_developer_documents():
    hits = [f"{rel}:{i}: {line.strip()[:120]}"
            for rel, text in _texts()
            for i, line in enumerate(text.splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert not hits, ("these lines cite the developers' specification or design note, which users never see; "
                      "cite docs/METHODS.md#<anchor> (or the document meant) instead:\n" + "\n".join(hits))


def test_every_methods_citation_resolves():
    anchors = set(_anchors())
    broken = [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: METHODS.md#{m.group(1)}"
              for rel, text in _texts() for m in CITATION.finditer(text)
              if m.group(1) not in anchors and not m.group(1).endswith("-NAME")]
    assert not broken, "citations of anchors that docs/METHODS.md does not have:\n" + "\n".join(broken)


def test_methods_in_page_links_resolve():
    anchors = set(_anchors())
    missing = sorted(set(IN_PAGE_LINK.findall(METHODS.read_text(encoding="utf-8"))) - anchors)
    assert not missing, f"docs/METHODS.md links to anchors it does not define: {missing}"


def test_every_registered_name_metric_and_selection_rule_has_an_entry():
    anchors = set(_anchors())
    missing = [a for a in _required() if a not in anchors]
    assert not missing, (
        "docs/METHODS.md has no entry for these (add a section with <a id=\"ANCHOR\"></a>, its formula, defaults "
        "and source):\n" + "\n".join(missing)
    )


def test_anchors_are_unique():
    repeated = sorted(a for a, n in Counter(_anchors()).items() if n > 1)
    assert not repeated, f"anchors defined more than once in docs/METHODS.md: {repeated}"


@pytest.mark.parametrize("rule", SELECTION_RULES)
def test_the_selection_rules_are_the_loops(rule):
    """The rules named here are the ones ``train.select`` accepts, so the contract follows the code."""
    from shiftkit.train import parse_select

    assert parse_select("last" if rule == "last" else "best:acc") == (None if rule == "last" else "acc")
