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
