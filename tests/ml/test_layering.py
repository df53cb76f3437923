"""`ml/` works without the web service: it never imports `app`, FastAPI or SQLAlchemy (nor the rest of that stack)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ML = Path(__file__).resolve().parents[2] / "ml"
FORBIDDEN = {"app", "fastapi", "sqlalchemy", "starlette", "uvicorn", "alembic", "psycopg"}


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in (
                "import_module",
                "__import__",
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_the_scan_sees_imports_of_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os.path\nfrom fastapi import FastAPI\nimport importlib\n"
        "def f():\n    import sqlalchemy.orm as orm\n    return importlib.import_module('app.main')\n"
    )
    assert imported_top_level_names(probe) == {"os", "fastapi", "importlib", "sqlalchemy", "app"}


def test_no_ml_source_file_imports_the_web_stack() -> None:
    files = sorted(ML.rglob("*.py"))
    assert len(files) > 15, "the scan must see the whole package"
    offenders = {
        str(f.relative_to(ML.parent)): sorted(bad) for f in files if (bad := imported_top_level_names(f) & FORBIDDEN)
    }
    assert offenders == {}


def test_importing_every_ml_module_loads_none_of_the_web_stack() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import ml\n"
        "names = [m.name for m in pkgutil.walk_packages(ml.__path__, 'ml.') if m.name != 'ml.__main__']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'modules': names, 'loaded': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ML.parent)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"ml.registry", "ml.cam.base", "ml.inference", "ml.train", "ml.cli"} <= set(result["modules"])
    assert "torch" in result["loaded"], "the probe really imported the ML core"
    assert set(result["loaded"]) & FORBIDDEN == set()
