"""House rules that can be checked mechanically: one framework per module, nothing heavy at
import time, no eval, safe YAML."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "pipeline"
OWNER = {  # framework -> the modules that may import it
    "keras": ("model.py",),
    "tensorflow": ("model.py",),
    "mlflow": ("tracking",),  # the package pipeline/tracking/
    # the study; its space, samplers, pruners and first trials; storages; the study figures
    "optuna": ("search.py", "samplers.py", "warmstart.py", "storage.py", "report.py"),
    "ray": ("cluster.py",),  # the workers a Ray cluster places
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _owner_name(module: Path) -> str:
    """A top-level module's file name, or the package a submodule belongs to."""
    rel = module.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.name


@pytest.mark.parametrize("module", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_each_framework_is_used_by_one_module_only(module: Path):
    for framework, owners in OWNER.items():
        if framework in imported_roots(module):
            name = _owner_name(module)
            assert name in owners, f"{name} imports {framework}; only {owners} may"


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


def _protocol_names() -> set[str]:
    from pipeline import protocol

    names = {s.value for e in (protocol.TrialState, protocol.RunStatus) for s in e}
    return names | {v for k, v in vars(protocol).items() if k.endswith("_TAG")}


@pytest.mark.parametrize(
    "module", sorted(p for p in PKG.rglob("*.py") if p.name != "protocol.py"), ids=lambda p: p.name
)
def test_trial_states_and_run_tags_are_named_only_in_protocol(module: Path):
    """A state or tag spelled out as a literal elsewhere drifts from the one definition."""
    names = _protocol_names()
    literals = {
        node.value
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert not literals & names, f"{module.name} spells out {sorted(literals & names)}"


LIMITS = {"module": 600, "class": 300, "function": 60}  # lines, docstrings included


@pytest.mark.parametrize("module", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_classes_and_functions_stay_small(module: Path):
    """A reader finds a change's place from the file list only if no file or class hides a
    subsystem: no module over 600 lines, no class over 300, no function over 60."""
    text = module.read_text()
    assert len(text.splitlines()) <= LIMITS["module"], f"{module.name}: over 600 lines"
    for node in ast.walk(ast.parse(text)):
        kind = {ast.ClassDef: "class", ast.FunctionDef: "function"}.get(type(node))
        if kind is not None:
            size = node.end_lineno - node.lineno + 1
            assert size <= LIMITS[kind], f"{module.name}: {kind} {node.name} is {size} lines"
