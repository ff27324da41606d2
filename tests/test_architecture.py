"""The import rules that docs/ARCHITECTURE.md states, checked against every module's imports."""

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def stated_rules() -> dict[str, set[str]]:
    """package -> the packages it may import, from the table in docs/ARCHITECTURE.md."""
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rules = {}
    for package, allowed in re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|$", text, re.MULTILINE):
        rules[package] = set(re.findall(r"`(\w+)`", allowed))
    return rules


def imported_packages(module: Path, packages: set[str]) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        imported |= {name.split(".")[0] for name in names} & packages
    return imported


def test_the_stated_rules_cover_every_package() -> None:
    rules = stated_rules()
    assert set(rules) == {"models", "training", "core", "app", "worker", "bench"}
    assert rules["models"] == set()


def test_no_module_imports_what_its_package_may_not() -> None:
    rules = stated_rules()
    broken = []
    for package, allowed in rules.items():
        for module in sorted((REPO_ROOT / package).rglob("*.py")):
            for imported in imported_packages(module, set(rules)) - allowed - {package}:
                broken.append(f"{module.relative_to(REPO_ROOT)} imports {imported}")
    assert broken == []


#: The file names of a job's, a run's and a model's folder, each named only by its owner: retention
#: deletes by these names and export copies them, so a copy of one elsewhere would be a rename waiting
#: to become silent data loss or disk growth.
FOLDER_FILE_OWNERS = {
    "job.json": {"core/job_folder.py"},
    "result.zip": {"core/job_folder.py"},
    "config.json": {"training/run_folder.py"},
    "manifest.json": {"training/run_folder.py", "core/job_folder.py"},  # a run's split; a batch's answers
    "resume.pt": {"training/run_folder.py"},
    "history.json": {"training/run_folder.py"},
    "environment.json": {"training/run_folder.py"},
    "best.pt": {"training/run_folder.py"},
    "final.pt": {"training/run_folder.py"},
    "report.json": {"training/run_folder.py", "models/store.py"},
    "confusion_matrix.png": {"training/run_folder.py"},
    "risk_coverage.png": {"training/run_folder.py"},
    "loss_curve.png": {"training/run_folder.py"},
    "accuracy_curve.png": {"training/run_folder.py"},
    "index.npz": {"models/similarity.py"},
    "ood.npz": {"models/ood.py"},
    "model.pt": {"models/store.py"},
    "spec.json": {"models/store.py"},
    "default.json": {"models/store.py"},
    "SHA256SUMS": {"training/export.py"},
    "model.xml": {"models/runtime.py"},
}
FILE_NAME = re.compile("|".join(re.escape(name) for name in FOLDER_FILE_OWNERS))


def string_literals(module: Path) -> list[tuple[int, str]]:
    """Every string in the module's code, docstrings left out (they may name files to explain them)."""
    tree = ast.parse(module.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_each_folder_file_name_is_written_only_by_its_owner() -> None:
    found = []
    for package in stated_rules():
        for module in sorted((REPO_ROOT / package).rglob("*.py")):
            relative = module.relative_to(REPO_ROOT).as_posix()
            for line, text in string_literals(module):
                for name in FILE_NAME.findall(text):
                    if relative not in FOLDER_FILE_OWNERS[name]:
                        found.append(f"{relative}:{line} names {name}")
    assert found == []


def test_the_owners_are_where_the_architecture_page_says() -> None:
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for owner in set().union(*FOLDER_FILE_OWNERS.values()) - {"training/export.py"}:
        assert f"`{owner}`" in text, owner
