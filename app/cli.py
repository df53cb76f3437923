"""`cxr-review` console script: the ML commands (`ml.cli`) plus the service commands.

    cxr-review serve [--no-worker]           migrate, register models, start uvicorn (+ a training worker)
    cxr-review worker [--once]               claim and run queued training jobs
    cxr-review users create NAME --role reviewer|admin [--password-stdin]
    cxr-review users list | set-password NAME | disable NAME | enable NAME
    cxr-review tokens create NAME [--label TEXT]
    cxr-review tokens list [NAME]
    cxr-review tokens revoke TOKEN_ID_OR_PREFIX | --all NAME
    cxr-review models list | activate ID | register PATH
    cxr-review db upgrade [REV] | downgrade REV | current
    cxr-review pacs-sync [--once] [--status]  poll the PACS (DICOMweb), run new films, push results back
    cxr-review dicom-listener [--ae-title AE] --port N   C-STORE SCP for PACSes that push
    cxr-review predict FILE_OR_DIR... --csv OUT.csv [--models SPEC] [--overlays DIR] [--dicom-sr DIR]

Commands that print a new API token print it as the LAST line of their output, alone, so scripts
can take it with `tail -n 1`. Settings come from CXR_* environment variables.
"""

from __future__ import annotations

import argparse
import getpass
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING

from ml.cli import CLIError, run
from ml.cli import build_parser as build_ml_parser

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.config import Settings
    from app.models import User


def _settings() -> Settings:
    from pydantic import ValidationError

    from app.config import Settings, SettingsError

    try:
        return Settings().prepared()
    except (ValidationError, SettingsError) as exc:
        raise CLIError(str(exc)) from exc


@contextmanager
def _db_session() -> Iterator[Session]:
    """A session on the configured database, migrated to the latest schema first."""
    from app.db import make_engine, make_session_factory, upgrade_database

    settings = _settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _service_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        from app.services.errors import ServiceError

        try:
            return handler(args)
        except ServiceError as exc:
            raise CLIError(str(exc)) from exc

    return wrapped


def _user(session: Session, name: str) -> User:
    from app.services import accounts

    user = accounts.get_user_by_name(session=session, username=name)
    if user is None:
        raise CLIError(f"no user named {name!r}")
    return user


def _read_password(args: argparse.Namespace) -> str | None:
    """--password-stdin: first line of stdin; an interactive terminal: prompt twice; else None (generate)."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CLIError("no password on stdin")
        return password
    if sys.stdin.isatty():
        first = getpass.getpass("Password (empty: generate one): ")
        if not first:
            return None
        if getpass.getpass("Repeat password: ") != first:
            raise CLIError("passwords do not match")
        return first
    return None


# ------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    settings = _settings()
    host = args.host or settings.host
    port = args.port or settings.port
    from app.config import SettingsError

    try:
        app = create_app(settings)  # migrates, registers models, creates the first admin
    except SettingsError as exc:  # e.g. CXR_LUNGSEG_CHECKPOINT names a missing file
        raise CLIError(str(exc)) from exc
    worker = None
    if not args.no_worker:  # the web process never trains: one worker process runs beside it
        from app.processes import start_embedded_worker

        worker = start_embedded_worker()
        print(f"cxr-review: training worker started (pid {worker.pid}; --no-worker to disable)", flush=True)
    print(f"cxr-review: data in {settings.data_dir}; serving on http://{host}:{port}", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level=args.log_level, proxy_headers=False)
    finally:
        if worker is not None:  # SIGTERM: the worker puts a running job back in the queue, then exits
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0


# ------------------------------------------------------------------------------------ worker
def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from app.worker import run_worker_process

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    return run_worker_process(_settings(), once=args.once)


# ------------------------------------------------------------------------------------- users
@_service_errors
def cmd_users_create(args: argparse.Namespace) -> int:
    from app.services import accounts

    password = _read_password(args)
    with _db_session() as session:
        created = accounts.create_user_with_token(
            session=session, username=args.name, role=args.role, password=password
        )
    print(f"created {created.user.role} {created.user.username!r}")
    if created.generated_password:
        print(f"password (shown once): {created.generated_password}")
    print(f"API token {created.token.record.prefix}… (id {created.token.record.id}, shown once):")
    print(created.token.token)
    return 0


@_service_errors
def cmd_users_list(_args: argparse.Namespace) -> int:
    from app.services import accounts

    with _db_session() as session:
        users = accounts.list_users(session=session)
        print(f"{'name':<24} {'role':<9} {'active':<6} created")
        for u in users:
            print(f"{u.username:<24} {u.role:<9} {'yes' if u.active else 'no':<6} {u.created_at:%Y-%m-%d %H:%M}")
    return 0


@_service_errors
def cmd_users_set_password(args: argparse.Namespace) -> int:
    from app import security
    from app.services import accounts

    password = _read_password(args)
    generated = password is None
    password = password or security.generate_password()
    with _db_session() as session:
        accounts.set_password(session=session, user=_user(session, args.name), password=password)
    print(f"password of {args.name!r} changed; their browser sessions were ended")
    if generated:
        print(f"new password (shown once): {password}")
    return 0


@_service_errors
def cmd_users_set_active(args: argparse.Namespace) -> int:
    from app.services import accounts

    with _db_session() as session:
        accounts.set_active(session=session, user=_user(session, args.name), active=args.active)
    print(f"{args.name!r} {'enabled' if args.active else 'disabled'}")
    return 0


# ------------------------------------------------------------------------------------ tokens
@_service_errors
def cmd_tokens_create(args: argparse.Namespace) -> int:
    from app.services import accounts

    with _db_session() as session:
        issued = accounts.create_api_token(session=session, user=_user(session, args.name), label=args.label)
    print(f"API token {issued.record.prefix}… (id {issued.record.id}) for {args.name!r}, shown once:")
    print(issued.token)
    return 0


@_service_errors
def cmd_tokens_list(args: argparse.Namespace) -> int:
    from app.services import accounts

    with _db_session() as session:
        user = _user(session, args.name) if args.name else None
        tokens = accounts.list_api_tokens(session=session, user=user)
        print(f"{'id':>4} {'prefix':<14} {'user':<20} {'created':<17} {'last used':<17} status")
        for t in tokens:
            used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-"
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
            print(f"{t.id:>4} {t.prefix:<14} {t.user.username:<20} {t.created_at:%Y-%m-%d %H:%M} {used:<17} {state}")
    return 0


@_service_errors
def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from app.services import accounts

    if bool(args.token) == bool(args.all):
        raise CLIError("give either TOKEN_ID_OR_PREFIX or --all NAME")
    with _db_session() as session:
        if args.all:
            n = accounts.revoke_all_api_tokens(session=session, user=_user(session, args.all))
            print(f"revoked {n} token(s) of {args.all!r}")
        else:
            token = accounts.revoke_api_token(session=session, token_id_or_prefix=args.token)
            print(f"revoked token {token.id} ({token.prefix}…) of {token.user.username!r}")
    return 0


# ------------------------------------------------------------------------------------ models
@_service_errors
def cmd_models_list(_args: argparse.Namespace) -> int:
    from app.services import model_registry

    with _db_session() as session:
        model_registry.sync_models(session=session, settings=_settings())
        print(f"{'id':>3} {'active':<6} {'name':<20} {'ver':>3} {'arch':<14} {'sha256':<14} checkpoint")
        for m in model_registry.list_models(session=session):
            print(
                f"{m.id:>3} {'*' if m.active else '':<6} {m.name:<20} {m.version:>3} {m.architecture:<14} "
                f"{m.checkpoint_sha256[:12]:<14} {m.checkpoint_path}"
            )
    return 0


@_service_errors
def cmd_models_activate(args: argparse.Namespace) -> int:
    from app.services import promotion

    with _db_session() as session:
        model = promotion.activate(
            session=session, model_id=args.id, actor=None, reason=args.reason, max_drop=_settings().promotion_max_drop
        )
        print(f"model {model.id} ({model.name} v{model.version}) is now the active model")
    return 0


@_service_errors
def cmd_models_register(args: argparse.Namespace) -> int:
    from app.services import model_registry
    from ml.checkpoints import CheckpointError

    path = Path(args.path)
    if not path.is_file():
        raise CLIError(f"checkpoint not found: {path}")
    with _db_session() as session:
        try:
            model, created = model_registry.register_checkpoint(session=session, path=path, name=args.name)
        except (CheckpointError, KeyError) as exc:
            raise CLIError(f"{path}: {exc}") from exc
        print(
            f"{'registered' if created else 'already registered'}: model {model.id} ({model.name} "
            f"v{model.version}, {model.architecture}, sha256 {model.checkpoint_sha256[:12]})"
        )
    return 0


# -------------------------------------------------------------------------------------- pacs
def _pacs_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def cmd_pacs_sync(args: argparse.Namespace) -> int:
    from app.pacs import sync
    from app.pacs.dicomweb import PacsError

    settings = _settings()
    if args.status:
        from app.main import build_context

        ctx = build_context(settings)
        try:
            print("\n".join(sync.status_lines(ctx)))
        finally:
            ctx.close()
        return 0
    _pacs_logging()
    try:
        return sync.run(settings, once=args.once)
    except PacsError as exc:
        raise CLIError(str(exc)) from exc


def cmd_dicom_listener(args: argparse.Namespace) -> int:
    from app.pacs import listener
    from app.pacs.dicomweb import PacsError

    _pacs_logging()
    try:
        return listener.run(_settings(), ae_title=args.ae_title, host=args.host, port=args.port)
    except (PacsError, OSError) as exc:
        raise CLIError(str(exc)) from exc


@_service_errors
def cmd_predict(args: argparse.Namespace) -> int:
    from app.services import batch

    return batch.run(
        _settings(),
        inputs=[Path(p) for p in args.inputs],
        csv_path=Path(args.csv),
        models=args.models,
        overlays=Path(args.overlays) if args.overlays else None,
        dicom_sr=Path(args.dicom_sr) if args.dicom_sr else None,
        progress=not args.no_progress,
    )


# ---------------------------------------------------------------------------------------- db
def cmd_db(args: argparse.Namespace) -> int:
    from app.db import current_revision, downgrade_database, make_engine, upgrade_database

    engine = make_engine(_settings().resolved_database_url)
    try:
        if args.db_command == "upgrade":
            upgrade_database(engine, args.revision)
        elif args.db_command == "downgrade":
            downgrade_database(engine, args.revision)
        print(f"database revision: {current_revision(engine) or '(empty)'}")
    finally:
        engine.dispose()
    return 0


def add_service_commands(parser: argparse.ArgumentParser) -> None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    p = sub.add_parser("serve", help="apply migrations and start the web service")
    p.add_argument("--host", default=None, help="default: $CXR_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $CXR_PORT or 8000")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-worker", action="store_true", help="do not start a training worker beside the server")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("worker", help="run queued training jobs (several workers may share one database)")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit")
    p.set_defaults(handler=cmd_worker)

    users = sub.add_parser("users", help="manage accounts").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    p = users.add_parser("create", help="create an account and print an API token (last line)")
    p.add_argument("name")
    p.add_argument("--role", choices=["reviewer", "admin"], default="reviewer")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin's first line (default: prompt on a terminal, else generate and print one)",
    )
    p.set_defaults(handler=cmd_users_create)
    p = users.add_parser("list", help="list accounts")
    p.set_defaults(handler=cmd_users_list)
    p = users.add_parser("set-password", help="change a password (ends the user's browser sessions)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(handler=cmd_users_set_password)
    for action, active in (("disable", False), ("enable", True)):
        p = users.add_parser(action, help=f"{action} an account (disabled: no login, tokens rejected)")
        p.add_argument("name")
        p.set_defaults(handler=cmd_users_set_active, active=active)

    tokens = sub.add_parser("tokens", help="manage REST API tokens").add_subparsers(
        dest="tokens_command", required=True, metavar="ACTION"
    )
    p = tokens.add_parser("create", help="issue another API token for a user (printed as the last line)")
    p.add_argument("name")
    p.add_argument("--label", default=None)
    p.set_defaults(handler=cmd_tokens_create)
    p = tokens.add_parser("list", help="list tokens (prefixes only; tokens are stored hashed)")
    p.add_argument("name", nargs="?")
    p.set_defaults(handler=cmd_tokens_list)
    p = tokens.add_parser("revoke", help="revoke a token by id or prefix, or all tokens of a user")
    p.add_argument("token", nargs="?", metavar="TOKEN_ID_OR_PREFIX")
    p.add_argument("--all", metavar="NAME", default=None, help="revoke every token of this user")
    p.set_defaults(handler=cmd_tokens_revoke)

    models = sub.add_parser("models", help="registered models").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    p = models.add_parser("list", help="register new checkpoints, then list models")
    p.set_defaults(handler=cmd_models_list)
    p = models.add_parser("activate", help="make a model the default for predictions")
    p.add_argument("id", type=int)
    p.add_argument("--reason", default="", help="why (audited); required after a macro-sensitivity drop")
    p.set_defaults(handler=cmd_models_activate)
    p = models.add_parser("register", help="register a checkpoint file")
    p.add_argument("path")
    p.add_argument("--name", default=None, help="default: the checkpoint's file name without .pt")
    p.set_defaults(handler=cmd_models_register)

    db = sub.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    p = db.add_parser("upgrade", help="migrate to a revision (default: head)")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(handler=cmd_db)
    p = db.add_parser("downgrade", help="migrate down to a revision ('base' empties the schema)")
    p.add_argument("revision")
    p.set_defaults(handler=cmd_db)
    p = db.add_parser("current", help="print the current revision")
    p.set_defaults(handler=cmd_db, revision=None)


def add_integration_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs-sync", help="poll the PACS over DICOMweb, run new frontal CR/DX films, push results back")
    p.add_argument("--once", action="store_true", help="one pass, then exit (exit 1 when the PACS cannot be reached)")
    p.add_argument("--status", action="store_true", help="list rejected and failed instances and unsent results")
    p.set_defaults(handler=cmd_pacs_sync)

    p = sub.add_parser("dicom-listener", help="receive films by C-STORE (a DICOM SCP) and push results back")
    p.add_argument("--ae-title", default=None, help="default: $CXR_PACS_AE_TITLE or CXRREVIEW")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    p.add_argument("--port", type=int, required=True)
    p.set_defaults(handler=cmd_dicom_listener)

    p = sub.add_parser("predict", help="run the models on PNG/JPEG/DICOM files or folders, one CSV row per film")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--csv", required=True, metavar="OUT.csv")
    p.add_argument("--models", default=None, help="model ids (comma-separated) or 'all'; default: the active model")
    p.add_argument("--overlays", default=None, metavar="DIR", help="write each result's heat-map overlay PNG here")
    p.add_argument("--dicom-sr", default=None, metavar="DIR", help="write each result's DICOM SR here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_predict)


def build_parser() -> argparse.ArgumentParser:
    parser = build_ml_parser()
    add_service_commands(parser)
    add_integration_commands(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
