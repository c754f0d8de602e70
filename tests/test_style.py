"""House rules that can be checked mechanically: one framework per module, nothing heavy at
import time, no eval, safe YAML."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pipeline"
OWNER = {
    "keras": "model.py",
    "tensorflow": "model.py",
    "mlflow": "tracking.py",
    "optuna": "search.py",
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_each_framework_is_used_by_one_module_only(module: Path):
    for framework, owner in OWNER.items():
        if framework in imported_roots(module):
            assert module.name == owner, f"{module.name} imports {framework}; only {owner} may"


@pytest.mark.parametrize("module", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_no_eval_and_only_safe_yaml(module: Path):
    text = module.read_text()
    assert "eval(" not in text.replace("evaluate(", "")
    assert "yaml.load(" not in text and "pickle" not in imported_roots(module)


def test_cli_start_up_imports_no_framework():
    code = (
        "import sys; from pipeline import run; run.build_parser(); "
        "heavy = ('tensorflow', 'keras', 'mlflow', 'optuna', 'pandas'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
