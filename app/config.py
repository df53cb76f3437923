"""Service settings: one pydantic-settings class, environment prefix `CXR_`.

Nothing reads the environment at import time: `create_app(settings=None)` and the CLI build a
`Settings()` when they start, and tests pass their own. Paths are resolved once by
`Settings.prepared()`, which also settles the secret key (see `resolve_secret_key`).
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ml.dataset_dirs import parse_dataset_dirs

# Secrets that show up in examples and must never guard a production deployment.
_KNOWN_WEAK_SECRETS = {"", "changeme", "change-me", "changethis", "secret", "dev", "development", "test"}
SECRET_KEY_FILE = "secret_key"
MIN_SECRET_LENGTH = 32


class SettingsError(ValueError):
    """The settings cannot run a service (e.g. production without a real secret key)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("var")
    """SQLite database, content-addressed images, CAM maps, overlay cache, the development secret key."""
    database_url: str | None = None
    """Default: SQLite at DATA_DIR/cxr-review.sqlite3. `postgresql+psycopg://user:pw@host/db` switches."""
    models_dir: Path | None = None
    """Extra checkpoints (*.pt) registered at start. Default: DATA_DIR/models."""
    default_checkpoint: Path | None = None
    """Registered (and made active if no model is) at start. Default: ml.checkpoints.DEFAULT_CHECKPOINT."""
    dataset_dirs: Annotated[list[Path] | None, NoDecode] = None
    """The manifest folders retraining jobs may use, each known by its folder name (`cxr`, `cxr-adult`).
    From the environment: a JSON list, or folders separated by os.pathsep (`:`). Default: `dataset_dir`
    alone if set, else ../shared/data/cxr and ../shared/data/cxr-adult beside the project."""
    dataset_dir: Path | None = None
    """One dataset folder: an alias of `dataset_dirs` with that folder alone (ignored when both are set)."""
    pretrained_dir: Path | None = None
    cache_dir: Path | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    secret_key: str | None = None
    """Required when ENV=production. In development a random key is generated and kept in DATA_DIR."""

    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_pixels: int = Field(default=40_000_000, gt=0)
    """Largest accepted width×height, checked from the file header before any pixel is decoded."""

    session_hours: float = Field(default=12.0, gt=0)
    login_max_failures: int = Field(default=5, gt=0)
    login_window_seconds: int = Field(default=15 * 60, gt=0)
    bootstrap_admin: str = "admin"
    """Name of the admin account created (with a one-time password) on the first start with no users."""
    torch_threads: int | None = Field(default=1, ge=1)
    """Intra-op threads per forward pass. 1 suits a server: concurrent requests run in parallel
    threads instead, and a CPU shared with other work is not oversubscribed (on the 2-core dev box
    a resnet18 forward took ~2.5 s with torch's default threads under load, ~0.15 s with 1).
    None leaves torch's default."""
    inference_workers: int | None = Field(default=None, ge=1)
    """Threads of the process's one inference executor (`app.services.executor`), each running whole
    micro-batches with `torch_threads` intra-op threads. None: the usable cores (the process's CPU
    affinity) divided by `torch_threads`, so workers × threads = cores and no load oversubscribes
    the CPU."""
    inference_batch_size: int = Field(default=8, ge=1)
    """Most films one micro-batch runs (segmenter per film, then one forward pass per model)."""
    inference_batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    """How long a worker waits for more films when its batch is not full. 0: it takes what is queued
    (under load the queue fills while the workers are busy, so batches form by themselves, and a
    lone request never waits); above 0, fuller batches when requests arrive spread out, at up to
    this much added latency."""
    inference_idle_trim_seconds: float = Field(default=1.0, ge=0)
    """After this long without work the executor gives its heaps' free pages back to the OS (glibc
    malloc_trim), so the memory a burst of large batches took does not stay with the process; 0: never.
    Uploads arriving closer together than this never pay for it."""
    inference_queue_films: int = Field(default=64, ge=1)
    """Films the executor queue holds (a `models=all` film counts once); an upload that does not fit
    is answered 503 with Retry-After, before anything is stored."""
    malloc_mmap_threshold_bytes: int | None = Field(default=None, ge=0)
    """glibc only: a fixed mmap threshold for the server process (heap blocks this large are mmap'ed and
    returned to the OS on free). None keeps glibc's dynamic threshold. A fixed one keeps the RSS of a
    process that runs torch in many threads from ratcheting up, but every large tensor buffer then
    costs page faults: 128 KiB made a resnet18 forward ~35 % slower. With the executor only its few
    threads run torch, so the dynamic default keeps the RSS flat (bench/load.py prints it)."""
    preload_models: bool = True
    """Load the active model's weights at start (the first prediction is then as fast as the rest)."""

    # Lung focus (share of a CAM's positive evidence inside the lungs; see ml.lung_focus).
    lungseg_checkpoint: Path | None = None
    """The lung segmenter every upload runs once. Default: ml.lungseg.BUNDLED_LUNGSEG (ml/bundled/lungseg.pt)."""
    lung_focus_threshold: float = 0.5
    """A result is flagged when less than this share of its predicted class's CAM evidence lies inside
    the lungs. Applied when results are read, so changing it re-flags every stored result."""

    # Reading (app.services.reading).
    reading_mode: Literal["film_first", "ai_first"] = "film_first"
    """How a case page opens for users who chose no reading mode of their own (account page):
    film_first shows the plain film and keeps the AI (probabilities, heat maps, warnings) back until
    the reviewer asks for it (V, "Show AI"); ai_first shows everything at once."""
    promotion_max_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    """Activating a model whose macro sensitivity is more than this below the active one's (test split)
    needs a typed reason, kept in the audit log."""

    # Retraining (app.worker): jobs are claimed from the database by `cxr-review worker` processes.
    train_nproc: int = Field(default=1, ge=1)
    """Processes per training job; above 1 the job runs under `torchrun --standalone --nproc_per_node N`
    (DistributedDataParallel: gloo on CPU, nccl on GPU)."""
    train_threads: int | None = Field(default=None, ge=1)
    """torch/OpenMP threads of each training process (OMP_NUM_THREADS); None leaves torch's default."""
    train_max_steps: int | None = Field(default=None, ge=1)
    """A cap on the steps per epoch of every job (smoke runs, tests); a job may ask for fewer."""
    train_device: str = "auto"
    worker_poll_seconds: float = Field(default=2.0, gt=0)
    """How often an idle worker looks for a queued job."""
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    worker_stale_seconds: float = Field(default=30.0, gt=0)
    """A running job whose worker has not heartbeated for this long is failed by the reaper."""

    # Hospital integration (app.pacs): `cxr-review pacs-sync` and `cxr-review dicom-listener`.
    dicomweb_url: str | None = None
    """Root of the PACS's DICOMweb API (QIDO-RS, WADO-RS, STOW-RS), e.g. http://pacs:8042/dicom-web."""
    dicomweb_username: str | None = None
    dicomweb_password: SecretStr | None = None
    """HTTP basic credentials for the DICOMweb API (both or neither)."""
    dicomweb_token: SecretStr | None = None
    """A bearer token for the DICOMweb API, instead of basic credentials."""
    dicomweb_timeout_seconds: float = Field(default=60.0, gt=0)
    pacs_poll_seconds: float = Field(default=60.0, gt=0)
    """How often `pacs-sync` (without --once) asks the PACS for new films."""
    pacs_lookback_days: int = Field(default=7, ge=0)
    """Only studies from this many days back are queried (0: every study on the PACS)."""
    pacs_modalities: str = "CR,DX"
    pacs_models: str | None = None
    """Which models run on PACS films (as the API's `models` field: ids, 'all'); default the active one."""
    pacs_max_attempts: int = Field(default=3, ge=1)
    """Tries per instance (retrieve + predict) and per result object (push) before it is reported failed."""
    pacs_output: Literal["stow-rs", "c-store", "none"] = "stow-rs"
    """Where the SR, SEG and SC go: STOW-RS to CXR_DICOMWEB_URL, C-STORE to CXR_PACS_STORE_*, or nowhere."""
    pacs_ae_title: str = Field(default="CXRREVIEW", min_length=1, max_length=16)
    """This service's AE title: the listener's, and the calling AE of its C-STOREs."""
    pacs_calling_ae_titles: str = ""
    """Comma-separated AE titles the listener accepts associations from; empty: any."""
    pacs_store_host: str | None = None
    pacs_store_port: int | None = Field(default=None, ge=1, le=65535)
    pacs_store_ae_title: str = Field(default="ORTHANC", min_length=1, max_length=16)
    """The C-STORE destination of results when CXR_PACS_OUTPUT=c-store."""

    @field_validator("dataset_dirs", mode="before")
    @classmethod
    def _dataset_dirs_from_text(cls, value: Any) -> Any:
        """CXR_DATASET_DIRS as text: a JSON list (`["a", "b"]`) or `a:b` (os.pathsep); blank = unset."""
        if not isinstance(value, str):
            return value
        return parse_dataset_dirs(value) if value.strip() else None

    @field_validator("dataset_dirs")
    @classmethod
    def _dataset_names_are_unique(cls, value: list[Path] | None) -> list[Path] | None:
        if value is None:
            return None
        if not value:
            raise SettingsError("CXR_DATASET_DIRS must name at least one folder")
        names = [dataset_name(d) for d in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SettingsError(
                f"CXR_DATASET_DIRS: jobs choose datasets by folder name, and {', '.join(twice)} names two "
                f"folders ({', '.join(str(d) for d in value if dataset_name(d) in twice)})"
            )
        return value

    @field_validator("lung_focus_threshold")
    @classmethod
    def _threshold_is_a_share(cls, value: float) -> float:
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise SettingsError(
                f"CXR_LUNG_FOCUS_THRESHOLD must be a number from 0 to 1 (a share of the CAM's evidence, "
                f"e.g. 0.5), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        if self.env == "production":
            key = self.secret_key or ""
            if key.strip().lower() in _KNOWN_WEAK_SECRETS or len(key) < MIN_SECRET_LENGTH:
                raise SettingsError(
                    "CXR_SECRET_KEY must be set to a random value of at least "
                    f"{MIN_SECRET_LENGTH} characters when CXR_ENV=production "
                    '(e.g. python -c "import secrets; print(secrets.token_urlsafe(48))")'
                )
        return self

    @model_validator(mode="after")
    def _pacs_output_has_a_destination(self) -> Settings:
        if (self.dicomweb_username is None) != (self.dicomweb_password is None):
            raise SettingsError("set both CXR_DICOMWEB_USERNAME and CXR_DICOMWEB_PASSWORD, or neither")
        if self.dicomweb_password is not None and not self.dicomweb_password.get_secret_value():
            raise SettingsError(
                "CXR_DICOMWEB_PASSWORD is empty (e.g. CXR_ORTHANC_PASSWORD unset for the compose profile)"
            )
        if self.pacs_output == "c-store" and (self.pacs_store_host is None or self.pacs_store_port is None):
            raise SettingsError("CXR_PACS_OUTPUT=c-store needs CXR_PACS_STORE_HOST and CXR_PACS_STORE_PORT")
        return self

    @property
    def resolved_inference_workers(self) -> int:
        """`inference_workers`, else the usable cores / `torch_threads` (at least 1)."""
        if self.inference_workers is not None:
            return self.inference_workers
        return max(1, usable_cores() // (self.torch_threads or 1))

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "cxr-review.sqlite3"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_path.resolve()}"

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def resolved_dataset_dirs(self) -> dict[str, Path]:
        """The configured manifest folders by name (folder name), in the configured order:
        CXR_DATASET_DIRS, else CXR_DATASET_DIR alone, else ../shared/data/cxr and ../shared/data/cxr-adult."""
        if self.dataset_dirs is not None:
            dirs = list(self.dataset_dirs)
        elif self.dataset_dir is not None:
            dirs = [self.dataset_dir]
        else:
            shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
            dirs = [shared / "cxr", shared / "cxr-adult"]
        return {dataset_name(d): d for d in dirs}

    @property
    def training_dir(self) -> Path:
        """Work dirs of training jobs (DATA_DIR/training/job-<id>): exported uploads, logs, checkpoints, charts."""
        return self.data_dir / "training"

    @property
    def resolved_default_checkpoint(self) -> Path:
        if self.default_checkpoint is not None:
            return self.default_checkpoint
        from ml.checkpoints import DEFAULT_CHECKPOINT

        return DEFAULT_CHECKPOINT

    @property
    def resolved_lungseg_checkpoint(self) -> Path:
        if self.lungseg_checkpoint is not None:
            return self.lungseg_checkpoint
        from ml.lungseg import BUNDLED_LUNGSEG

        return BUNDLED_LUNGSEG

    def prepared(self) -> Settings:
        """A copy with absolute paths, the data dir created and the secret key settled."""
        data_dir = self.data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        prepared = self.model_copy(update={"data_dir": data_dir})
        return prepared.model_copy(update={"secret_key": resolve_secret_key(prepared)})


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under `taskset`), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def dataset_name(folder: Path) -> str:
    """How jobs, the API and the admin form name a dataset folder: its last path component."""
    return Path(folder).expanduser().resolve().name or str(folder)


def resolve_secret_key(settings: Settings) -> str:
    """The configured key; in development without one, a random key persisted in DATA_DIR/secret_key.

    Persisting it keeps sessions valid across restarts without anyone having to invent a secret.
    """
    if settings.secret_key:
        return settings.secret_key
    if settings.production:  # unreachable through the validator; kept as a guard for model_copy users
        raise SettingsError("CXR_SECRET_KEY is required when CXR_ENV=production")
    path = settings.data_dir / SECRET_KEY_FILE
    if path.is_file():
        key = path.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(48)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(key + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return key
