"""The packages stand in layers and import only downwards:

    o2chain      the command line, the demo, provisioning, the firmware tooling
    gateway, simulators, dashboards
    o2base       profiles and registers, the payload schema, errors, process supervision
    o2core       pure formulas and codecs, shared with the board firmware

A module may import its own package and the layers below it (dashboards may also read the
gateway's rule and schema definitions: a dashboard shows what the gateway stores). Tests and
benchmarks sit on top of everything and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"o2core", "o2base", "gateway", "simulators", "dashboards", "o2chain"}
ALLOWED: dict[str, set[str]] = {
    "o2core": set(),
    "o2base": {"o2core"},
    "gateway": {"o2core", "o2base"},
    "simulators": {"o2core", "o2base"},
    "dashboards": {"o2core", "o2base", "gateway"},
    "o2chain": PROJECT,
}


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages ``path`` imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & PROJECT
    return found


def modules(package: str) -> list[Path]:
    return [
        p
        for p in sorted((ROOT / package).rglob("*.py"))
        if "tests" not in p.relative_to(ROOT).parts
    ]


def test_every_package_imports_only_downwards() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in modules(package):
            for target in imported_packages(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from o2chain.demo import run\n    import gateway.config\n")
    assert imported_packages(module) == {"o2chain", "gateway"}


def test_the_layers_are_all_there() -> None:
    present = {p for p in ALLOWED if (ROOT / p / "__init__.py").is_file()}
    assert present >= {"o2core", "o2base", "gateway", "simulators", "dashboards", "o2chain"}
    assert all(modules(p) for p in present)
