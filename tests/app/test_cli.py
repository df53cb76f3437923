"""The service commands of `cxr-review`, run as a user would (subprocess, environment settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from app.models import MLModel
from app.services import audit
from tests.app.conftest import EnvFactory
from tests.support.checkpoints import write_untrained_cnnx


def cli(
    data_dir: Path, *args: str, stdin: str = "", database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CXR_DATA_DIR": str(data_dir)}
    if database_url:
        env["CXR_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_users_create_prints_a_working_token_last_and_tokens_can_be_revoked(
    make_env: EnvFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    url = make_env.url_for(data_dir)  # the CLI works on the database the app will use (SQLite or PostgreSQL)
    created = cli(data_dir, "users", "create", "dana", "--role", "admin", database_url=url)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    token = lines[-1]
    assert token.startswith("cxr_") and " " not in token
    assert any(line.startswith("password (shown once): ") for line in lines)  # generated: no terminal, no stdin

    second = cli(data_dir, "tokens", "create", "dana", database_url=url)
    assert second.returncode == 0, second.stderr
    token2 = second.stdout.strip().splitlines()[-1]
    assert token2.startswith("cxr_") and token2 != token

    env = make_env(data_dir, users=False)
    for t in (token, token2):
        me = env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {t}"})
        assert me.status_code == 200 and me.json()["role"] == "admin"
    assert env.client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    revoked = cli(data_dir, "tokens", "revoke", token2[:12], database_url=url)
    assert revoked.returncode == 0, revoked.stderr
    assert env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token2}"}).status_code == 401
    assert env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    everything = cli(data_dir, "tokens", "revoke", "--all", "dana", database_url=url)
    assert everything.returncode == 0 and "revoked 1 token" in everything.stdout
    assert env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_users_create_with_password_stdin_and_clear_errors(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ok = cli(data_dir, "users", "create", "erin", "--password-stdin", stdin="a long enough secret\n")
    assert ok.returncode == 0 and "password (shown once)" not in ok.stdout
    again = cli(data_dir, "users", "create", "erin", "--password-stdin", stdin="a long enough secret\n")
    assert again.returncode == 2 and again.stderr.strip() == "error: user 'erin' already exists"
    short = cli(data_dir, "users", "create", "fay", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    missing = cli(data_dir, "tokens", "create", "nobody")
    assert missing.returncode == 2 and "no user named 'nobody'" in missing.stderr
    listing = cli(data_dir, "users", "list")
    assert "erin" in listing.stdout and "fay" not in listing.stdout


def test_models_activate_refuses_a_changed_checkpoint_like_the_api(make_env: EnvFactory, tmp_path: Path) -> None:
    """`models activate` is the admin action of the API and pages: the same checks, audited (as the system)."""
    data_dir = tmp_path / "data"
    checkpoint = write_untrained_cnnx(data_dir / "models" / "cnnx-untrained.pt")
    url = make_env.url_for(data_dir)
    env = make_env(data_dir, users=False)  # registers the bundled model (active) and the CNN-X
    with env.session() as s:
        other = s.scalars(select(MLModel).where(MLModel.active.is_(False))).one().id
    original = checkpoint.read_bytes()
    checkpoint.write_bytes(original + b"changed")
    refused = cli(data_dir, "models", "activate", str(other), database_url=url)
    assert refused.returncode == 2 and "checkpoint is missing or changed" in refused.stderr
    checkpoint.write_bytes(original)
    done = cli(data_dir, "models", "activate", str(other), database_url=url)
    assert done.returncode == 0 and "is now the active model" in done.stdout, done.stderr
    with env.session() as s:
        assert s.scalars(select(MLModel.id).where(MLModel.active.is_(True))).all() == [other]
        (entry,) = audit.list_entries(session=s, limit=1, action_prefix="model.")
        assert (entry.actor, entry.action, entry.target_id) == ("system", "model.promote", other)
