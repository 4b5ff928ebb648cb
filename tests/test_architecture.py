"""The structure docs/architecture.md describes, checked: the layers and the absence of import circles (import-linter's
contracts in pyproject.toml), at most 8 parameters per function, and no branch on a layout, a learner or an input
kind outside the module that owns it."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
MAX_PARAMETERS = 8


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_import_contracts_hold():
    """lint-imports reads [tool.importlinter] in pyproject.toml: the layers, and no circle in any package."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [a.vararg.arg] if a.vararg else []
    names += [a.kwarg.arg] if a.kwarg else []
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def test_no_function_takes_more_than_eight_parameters():
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(parameters(node))})"
            for path in sources() for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(parameters(node)) > MAX_PARAMETERS]
    assert not long, "functions with more than 8 parameters besides self: " + ", ".join(long)


def owned_names() -> dict[str, tuple[set[str], str]]:
    """what is branched on -> (its names, the package or module that owns them)."""
    from pipeline.data.layout import REGISTRY
    from pipeline.inputs import KINDS

    return {"layout": (set(REGISTRY), "pipeline/data/layouts/"),
            "kind": (set(KINDS), "pipeline/inputs/"),
            "model_form": ({"gbm", "vector", "sequence", "image"}, "pipeline/learners/")}


def kind_branches(path: Path) -> list[str]:
    """Comparisons of a layout's, an input kind's or a learner's name with what names one, in this file."""
    rel = str(path.relative_to(ROOT))
    text = path.read_text()
    found = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        words = {s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)}
        words |= {e.value for s in sides if isinstance(s, (ast.Tuple, ast.Set, ast.List)) for e in s.elts
                  if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        other = " ".join(ast.get_source_segment(text, s) or "" for s in sides if not isinstance(s, ast.Constant))
        if ".forms" in other:  # which model forms a kind takes ('image' in kind.forms) is the kind's own answer
            continue
        for what, (names, owner) in owned_names().items():
            if words & names and what in other and not rel.startswith(owner):
                found.append(f"{rel}:{node.lineno} {ast.get_source_segment(text, node)}")
    return found


def test_no_branch_on_a_layout_a_learner_or_an_input_kind_outside_its_owner():
    found = [line for path in sources() for line in kind_branches(path)]
    assert not found, "kind branches outside their owner: " + "; ".join(found)


@pytest.mark.parametrize("code, owner", [
    ('if desc.layout == "table":\n    pass\n', "layout"),
    ('x = 1 if model_form(cfg.model) == "gbm" else 2\n', "model_form"),
    ('if spec.kind in ("sequence", "frames"):\n    pass\n', "kind"),
])
def test_the_branch_scan_finds_a_planted_branch(tmp_path, monkeypatch, code, owner):
    """The scan above is not vacuous: a planted branch of each sort is found."""
    planted = PACKAGE / "_planted_branch.py"
    monkeypatch.setattr(sys.modules[__name__], "sources", lambda: [planted])
    planted.write_text(code)
    try:
        assert len(kind_branches(planted)) == 1
    finally:
        planted.unlink()
