"""Concurrency and durability against a live server, on SQLite (WAL) and on PostgreSQL.

1. 20 concurrent clients post 100 uploads and 200 verdicts: every one is acknowledged (201) and
   stored exactly once, with the content the client sent; none lost, duplicated or invented.
2. Then the same server is loaded again by 20 clients and killed with SIGKILL mid-load (no shutdown,
   no rollback, requests in flight), and restarted on the same data dir and database: every write
   ever acknowledged (phase 1 included) is present and intact, no row lacks its parent or its files,
   no file lacks its row (an upload cut between writing its files and committing leaves files, which
   the next start removes), SQLite's integrity check is clean, and the service takes new writes.
3. The leftover clean-up itself, deterministically: planted leftovers go, committed files stay, and
   nothing is touched while another process serves the data dir.

The two live phases share one server per engine (a cold start is the slowest part on a busy CPU).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.reliability.conftest import Database
from tests.reliability.support import Account, LiveServer, audit, content_files, film_png, prepare

CLIENTS = 20
UPLOADS_PER_CLIENT = 5  # 100 uploads
VERDICTS_PER_UPLOAD = 2  # 200 verdicts
REVIEWERS = 4
KILL_AFTER_UPLOADS = 30  # phase 2: writes acknowledged before the kill
KILL_AFTER_VERDICTS = 30
LOAD_TIMEOUT_S = 300


PredictionRecord = tuple[str, str | None]
"""(image sha256, file name)"""
VerdictRecord = tuple[int, str, str, str]
"""(prediction id, reviewer, verdict, comment)"""


@dataclass
class Ledger:
    """What the server acknowledged (2xx), and anything else that happened."""

    predictions: dict[int, PredictionRecord] = field(default_factory=dict)
    verdicts: dict[int, VerdictRecord] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cases: list[tuple[int, int]] = field(default_factory=list)  # (prediction id, model id)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def upload(self, http: httpx.Client, name: str, data: bytes) -> tuple[int, int] | None:
        r = http.post("/api/v1/predictions", files={"file": (name, data, "image/png")})
        if r.status_code != 201:
            self.errors.append(f"upload {name}: {r.status_code} {r.text[:200]}")
            return None
        body = r.json()
        case = (body["id"], body["results"][0]["model_id"])
        with self.lock:
            assert body["id"] not in self.predictions, f"prediction id {body['id']} acknowledged twice"
            self.predictions[body["id"]] = (body["image_sha256"], body["filename"])
            self.cases.append(case)
        return case

    def verdict(self, http: httpx.Client, reviewer: str, case: tuple[int, int], verdict: str, comment: str) -> None:
        prediction_id, model_id = case
        r = http.post(
            f"/api/v1/predictions/{prediction_id}/verdicts",
            json={
                "model_id": model_id,
                "verdict": verdict,
                "reasons": ["outside_lungs"] if verdict == "reject" else [],
                "comment": comment,
            },
        )
        if r.status_code != 201:
            self.errors.append(f"verdict {comment}: {r.status_code} {r.text[:200]}")
            return
        with self.lock:
            vid = r.json()["id"]
            assert vid not in self.verdicts, f"verdict id {vid} acknowledged twice"
            self.verdicts[vid] = (prediction_id, reviewer, verdict, comment)


@dataclass
class Site:
    live: LiveServer
    reviewers: list[Account]
    ledger: Ledger
    admin: Account
    """Exports every verdict (a reviewer's export is blind to others' verdicts on results they did not read)."""


@pytest.fixture(scope="module")
def site(module_database: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir = tmp_path_factory.mktemp("durability")
    made = prepare(
        data_dir, module_database.url, {**{f"reader{i}": "reviewer" for i in range(REVIEWERS)}, "auditor": "admin"}
    )
    admin = made.pop("auditor")
    live = LiveServer(data_dir, module_database.url).start()
    try:
        yield Site(live, list(made.values()), Ledger(), admin)
    finally:
        live.stop()


def stored(live: LiveServer) -> tuple[dict[str, int], dict[int, PredictionRecord], dict[int, VerdictRecord]]:
    """Row counts, predictions and verdicts as the database holds them."""
    engine = live.engine()
    try:
        with engine.connect() as conn:
            counts = {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("predictions", "prediction_results", "images", "verdicts")
            }
            predictions = {
                row.id: (row.sha256, row.filename)
                for row in conn.execute(
                    text("SELECT p.id, i.sha256, p.filename FROM predictions p JOIN images i ON i.id = p.image_id")
                )
            }
            verdicts = {
                row.id: (row.prediction_id, row.username, row.verdict, row.comment)
                for row in conn.execute(
                    text(
                        "SELECT v.id, v.prediction_id, u.username, v.verdict, v.comment "
                        "FROM verdicts v JOIN users u ON u.id = v.reviewer_id"
                    )
                )
            }
        return counts, predictions, verdicts
    finally:
        engine.dispose()


# ------------------------------------------------------------------------- 1. concurrency
def steady_client(index: int, account: Account, site: Site, start: threading.Barrier) -> None:
    """Five uploads; after each, a verdict on the new case and one on a random acknowledged case."""
    rng = random.Random(index)
    films = [(f"c{index:02d}-u{k}.png", film_png(seed=1000 * index + k)) for k in range(UPLOADS_PER_CLIENT)]
    with httpx.Client(base_url=site.live.url, headers=account.headers, timeout=300) as http:
        start.wait()
        for k, (name, data) in enumerate(films):
            own = site.ledger.upload(http, name, data)
            if own is None:
                continue
            with site.ledger.lock:
                other = rng.choice(site.ledger.cases)
            for j, case in enumerate([own, other][:VERDICTS_PER_UPLOAD]):
                verdict = "reject" if j == 0 else "approve"
                site.ledger.verdict(http, account.username, case, verdict, f"c{index:02d}-u{k}-v{j}")


def test_concurrent_clients_store_every_write_exactly_once(site: Site) -> None:
    start = threading.Barrier(CLIENTS)
    threads = [
        threading.Thread(target=steady_client, args=(i, site.reviewers[i % REVIEWERS], site, start))
        for i in range(CLIENTS)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    ledger = site.ledger
    assert ledger.errors == [], ledger.errors[:5]
    n_uploads, n_verdicts = CLIENTS * UPLOADS_PER_CLIENT, CLIENTS * UPLOADS_PER_CLIENT * VERDICTS_PER_UPLOAD
    assert (len(ledger.predictions), len(ledger.verdicts)) == (n_uploads, n_verdicts)
    assert site.live.alive(), site.live.log_tail()

    counts, predictions, verdicts = stored(site.live)
    assert counts == {
        "predictions": n_uploads,
        "prediction_results": n_uploads,
        "images": n_uploads,
        "verdicts": n_verdicts,
    }
    assert predictions == ledger.predictions  # none lost, none duplicated, none invented
    assert verdicts == ledger.verdicts
    engine = site.live.engine()
    try:
        assert audit(engine, site.live.data_dir) == []
    finally:
        engine.dispose()
    # What an integrator exports (an admin: everyone's verdicts) is the same set.
    export = httpx.get(f"{site.live.url}/api/v1/verdicts?format=json", headers=site.admin.headers, timeout=60)
    assert sorted(row["verdict_id"] for row in export.json()["verdicts"]) == sorted(ledger.verdicts)
    print(f"\n{n_uploads} uploads + {n_verdicts} verdicts from {CLIENTS} clients in {seconds:.1f} s")


# -------------------------------------------------------------------------------- 2. kill -9
def hammering_client(index: int, account: Account, site: Site, killed: threading.Event) -> None:
    """Upload, then a verdict on the new case, until the server dies under it."""
    k = 0
    with httpx.Client(base_url=site.live.url, headers=account.headers, timeout=120) as http:
        while not killed.is_set():
            name = f"k{index:02d}-{k}.png"
            try:
                case = site.ledger.upload(http, name, film_png(seed=50_000 + 1000 * index + k))
                if case is None:
                    return
                site.ledger.verdict(http, account.username, case, "approve" if k % 2 else "reject", f"after {name}")
            except httpx.TransportError as exc:
                if not killed.is_set():
                    site.ledger.errors.append(f"{name}: transport error before the kill: {exc!r}")
                return
            k += 1


def test_acknowledged_writes_survive_kill_9(site: Site) -> None:
    ledger, live = site.ledger, site.live
    uploads_before, verdicts_before = len(ledger.predictions), len(ledger.verdicts)
    killed = threading.Event()
    threads = [
        threading.Thread(target=hammering_client, args=(i, site.reviewers[i % REVIEWERS], site, killed))
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while (
        len(ledger.predictions) < uploads_before + KILL_AFTER_UPLOADS
        or len(ledger.verdicts) < verdicts_before + KILL_AFTER_VERDICTS
    ):
        assert not ledger.errors, ledger.errors[:3]
        assert time.monotonic() < deadline, "the load did not reach the kill point"
        time.sleep(0.05)
    killed.set()
    live.kill()  # mid-load: requests in flight, some between writing files and committing
    for t in threads:
        t.join(timeout=180)
    assert not ledger.errors, ledger.errors[:3]
    files_at_kill = len(content_files(live.data_dir))

    live.start()  # same data dir, same database
    counts, predictions, verdicts = stored(live)
    lost_predictions = {i: v for i, v in ledger.predictions.items() if predictions.get(i) != v}
    lost_verdicts = {i: v for i, v in ledger.verdicts.items() if verdicts.get(i) != v}
    assert lost_predictions == {} and lost_verdicts == {}
    engine = live.engine()
    try:
        assert audit(engine, live.data_dir) == []
    finally:
        engine.dispose()

    # The restarted service works: a new case, and a verdict on an old one, with the history intact.
    reader = site.reviewers[0]
    with httpx.Client(base_url=live.url, headers=reader.headers, timeout=120) as http:
        case = ledger.upload(http, "after-restart.png", film_png(seed=999_999))
        assert case is not None, ledger.errors
        old_id, (old_prediction, _, _, _) = next(iter(ledger.verdicts.items()))
        ledger.verdict(http, reader.username, (old_prediction, case[1]), "approve", "after the crash")
        assert not ledger.errors, ledger.errors
        history = http.get(f"/api/v1/predictions/{old_prediction}").json()["verdicts"]
        assert old_id in [v["id"] for v in history]
    print(
        f"\nkilled after {len(ledger.predictions) - uploads_before - 1} more acknowledged uploads and "
        f"{len(ledger.verdicts) - verdicts_before - 1} verdicts; stored after the restart: {counts}; "
        f"content files at the kill: {files_at_kill}"
    )


# ------------------------------------------------------------------- 3. leftover clean-up
def plant_leftovers(data_dir: Path) -> list[Path]:
    """Files as an upload killed between writing them and committing its rows leaves them."""
    from app.services.storage import sha256_bytes

    paths = []
    for kind in ("original", "film", "cam", "mask", "temp"):
        sha = sha256_bytes(kind.encode())
        paths.append(
            {
                "original": data_dir / "images" / sha[:2] / sha,
                "film": data_dir / "images" / sha[:2] / f"{sha}.png",
                "cam": data_dir / "cams" / sha[:2] / f"{sha}.npy",
                "mask": data_dir / "masks" / sha[:2] / f"{sha}.png",
                "temp": data_dir / "images" / sha[:2] / f".{sha}.png.k2j4h5.tmp",
            }[kind]
        )
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"cut short")
    return paths


def test_leftovers_of_a_cut_upload_are_removed_at_start_and_committed_files_kept(
    database: Database, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import build_context, create_app
    from app.services.storage import DataDirLock

    data_dir = tmp_path / "data"
    made = prepare(data_dir, database.url, {"reader": "reviewer"})
    settings = Settings(data_dir=data_dir, database_url=database.url, env="development")
    with TestClient(create_app(settings, announce=lambda _line: None)) as client:
        r = client.post(
            "/api/v1/predictions", headers=made["reader"].headers, files={"file": ("a.png", film_png(seed=7))}
        )
        assert r.status_code == 201, r.text
        assert len(content_files(data_dir)) == 3  # original, CAM, lung mask: the 201 needs no more
        assert client.get(r.json()["image_url"], headers=made["reader"].headers).status_code == 200
    committed = content_files(data_dir)
    assert len(committed) == 4  # and the decoded film, derived from the original on first read

    # Another live process serves the data dir: its uploads may be mid-way, so nothing is touched.
    leftovers = plant_leftovers(data_dir)
    other = DataDirLock(data_dir)
    other.hold_shared()
    build_context(settings.prepared(), announce=lambda _line: None).close()
    assert all(p.exists() for p in leftovers)
    other.release()

    # Alone: the leftovers go, the committed files stay.
    ctx = build_context(settings.prepared(), announce=lambda _line: None)
    try:
        assert [p for p in leftovers if p.exists()] == []
        assert content_files(data_dir) == committed
        assert audit(ctx.engine, data_dir) == []
    finally:
        ctx.close()


# ------------------------------------------------------------------ beyond a process crash
def test_sqlite_syncs_every_commit_and_files_are_durable_before_their_rows(tmp_path: Path) -> None:
    """kill -9 only loses what the OS has not got; a power loss also loses what is not on disk. SQLite
    runs in WAL mode with synchronous=FULL (the WAL is synced at every commit: an acknowledged verdict
    survives an OS crash), and a stored file is fsynced, renamed into place and its folder fsynced
    before the row that names it can commit."""
    import os as os_module
    from unittest import mock

    from app.db import make_engine
    from app.services.storage import write_atomic

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    finally:
        engine.dispose()

    synced: list[str] = []
    real_fsync = os_module.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if os_module.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    target = tmp_path / "images" / "ab" / ("ab" + "0" * 62)
    with mock.patch("app.services.storage.os.fsync", side_effect=spy):
        assert write_atomic(target, b"film")
    assert synced == ["file", "dir"] and target.read_bytes() == b"film"
