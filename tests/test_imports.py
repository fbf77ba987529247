"""Imports flow one way: every ``cxr`` module and script imports only modules earlier in
``cxr.FLOW`` (read from the source with ``ast``, nothing is imported), and evaluation imports
no training module. A failure names the file, the line and the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cxr

REPO = Path(__file__).resolve().parents[1]
RANK = {name: i for i, name in enumerate(cxr.FLOW)}
#: The stage of each script: the last module of the flow it may import (and cxr.cli).
SCRIPTS = {
    "acquire": "sources",
    "manifest": "manifest",
    "select_protocol": "protocols",
    "split": "split",
    "augment": "augment",
    "preprocess": "store",
    "features": "features",
    "train": "train",
    **{
        name: "model_card"
        for name in (
            "evaluate",
            "evaluation_figures",
            "gradcam",
            "audit_masked",
            "audit_baselines",
            "shortcut_audit",
            "external",
            "model_card",
            "seeds_summary",
            "report",
        )
    },
    "compare_protocols": "comparison",
}


def cxr_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a ``cxr`` module in ``path`` (anywhere in the
    file, functions included): ``import cxr.x``, ``from cxr.x import y``, ``from cxr import x``
    (when ``x`` is a module); ``from cxr import CLASSES`` (the package) is not a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "cxr":
                names = [f"cxr.{a.name}" for a in node.names if a.name in RANK]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "cxr" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def violations(path: Path, stage: str, strict: bool, root: Path = REPO) -> list[str]:
    """What ``path`` imports against the flow, for a file of ``stage``: modules after it (or
    the same), modules not in the flow, training modules from evaluation. ``strict``: a
    module (may not import cxr.cli); else a script (may)."""
    where = path.relative_to(root)
    out = []
    for line, module in cxr_imports(path):
        if module not in RANK:
            out.append(f"{where}:{line} imports cxr.{module}, which is not in cxr.FLOW")
        elif module == stage and strict:
            out.append(f"{where}:{line} imports itself")
        elif RANK[module] > RANK[stage] and not (module == "cli" and not strict):
            out.append(
                f"{where}:{line} imports cxr.{module}, which comes after {stage} in cxr.FLOW"
            )
        elif stage in cxr.EVALUATION and module in cxr.TRAINING:
            out.append(f"{where}:{line} imports cxr.{module}: evaluation must not import training")
    return out


def test_every_module_is_in_the_flow():
    modules = {p.stem for p in (REPO / "cxr").glob("*.py")} - {"__init__"}
    assert modules == set(cxr.FLOW), "add new modules to cxr.FLOW (and its docstring)"
    assert set(cxr.TRAINING) | set(cxr.EVALUATION) <= modules


def test_every_script_has_a_stage():
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py")}
    assert scripts == set(SCRIPTS), "give new scripts a stage in tests/test_imports.py"


@pytest.mark.parametrize("module", cxr.FLOW)
def test_module_imports_only_earlier_modules(module):
    assert violations(REPO / "cxr" / f"{module}.py", module, strict=True) == []


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_imports_only_its_stage_and_before(script):
    assert violations(REPO / "scripts" / f"{script}.py", SCRIPTS[script], strict=False) == []


def test_the_check_names_the_offending_import(tmp_path):
    """Hand-made files: each rule fails with the file, line and import named."""
    later = tmp_path / "store.py"
    later.write_text("import numpy\nfrom cxr.model import build_model\n")
    evaluation = tmp_path / "metrics.py"
    evaluation.write_text("def f():\n    from cxr import train\n")
    unknown = tmp_path / "split.py"
    unknown.write_text("import cxr.nowhere\nfrom cxr import CLASSES\nfrom cxr.io import savez\n")
    script = tmp_path / "evaluate.py"
    script.write_text("from cxr.cli import boolean\nfrom cxr.runtime import configure_threads\n")
    assert violations(later, "store", True, tmp_path) == [
        "store.py:2 imports cxr.model, which comes after store in cxr.FLOW"
    ]
    assert violations(evaluation, "metrics", True, tmp_path) == [
        "metrics.py:2 imports cxr.train: evaluation must not import training"
    ]
    assert violations(unknown, "split", True, tmp_path) == [
        "split.py:1 imports cxr.nowhere, which is not in cxr.FLOW"
    ]
    assert violations(script, "model_card", False, tmp_path) == []  # scripts may use cli
    assert violations(script, "model_card", True, tmp_path) == [
        "evaluate.py:1 imports cxr.cli, which comes after model_card in cxr.FLOW"
    ]
    assert violations(tmp_path / "metrics.py", "store", True, tmp_path) == [
        "metrics.py:2 imports cxr.train, which comes after store in cxr.FLOW"
    ]
