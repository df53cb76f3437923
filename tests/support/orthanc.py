"""Throwaway Orthanc PACS servers for tests, from Debian's `orthanc` and `orthanc-dicomweb` packages.

`running_orthanc()` writes a configuration into a fresh temporary directory (storage and index there
too), starts `Orthanc` on a free 127.0.0.1 HTTP port and a free DICOM port with the DICOMweb plugin
loaded, waits until its REST API answers, and yields an `OrthancServer`; on exit it stops the server
and deletes the directory. It starts in well under a second.

The fixture `orthanc` gives each test a server emptied of studies (`OrthancServer.clear()`) from one
server per test session. Missing binaries are a test failure that names the fix (`make install`),
never a silent skip.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN_PATHS = (  # Debian's orthanc-dicomweb (bookworm: 1.7) installs the plugin here
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
AE_TITLE = "ORTHANC"
START_TIMEOUT_S = 30
START_ATTEMPTS = 3  # a free port can be taken between probing it and the server binding it


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is missing, or the server did not start."""


def find_binary() -> str:
    path = shutil.which("Orthanc") or (ORTHANC_BINARY if Path(ORTHANC_BINARY).is_file() else None)
    if path is None:
        raise OrthancUnavailable(
            f"Orthanc not found ({ORTHANC_BINARY} or on PATH); run `make install` "
            "(scripts/install-system-deps.sh installs Debian's orthanc and orthanc-dicomweb packages)"
        )
    return path


def find_dicomweb_plugin() -> Path:
    for path in DICOMWEB_PLUGIN_PATHS:
        if path.is_file():
            return path
    raise OrthancUnavailable(
        f"Orthanc's DICOMweb plugin not found in {', '.join(map(str, DICOMWEB_PLUGIN_PATHS))}; run `make install` "
        "(scripts/install-system-deps.sh installs Debian's orthanc-dicomweb package)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OrthancServer:
    base_dir: Path
    http_port: int = 0
    dicom_port: int = 0
    ae_title: str = AE_TITLE
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb API (QIDO-RS, WADO-RS, STOW-RS)."""
        return f"{self.url}/dicom-web"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "orthanc.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call of Orthanc's own REST API; the decoded JSON reply (None when empty)."""
        response = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def clear(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")

    def add_modality(self, name: str, *, ae_title: str, host: str, port: int) -> None:
        """Declare a DICOM peer Orthanc may C-STORE to (kept in memory until the server stops)."""
        self.rest("PUT", f"/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port})

    def forward_study(self, modality: str, study_instance_uid: str) -> Any:
        """C-STORE every instance of a study to a declared modality (Orthanc acting as the SCU)."""
        found = self.rest("POST", "/tools/lookup", content=study_instance_uid)
        ids = [entry["ID"] for entry in found if entry["Type"] == "Study"]
        if not ids:
            raise LookupError(f"study {study_instance_uid} is not in Orthanc")
        return self.rest("POST", f"/modalities/{modality}/store", json={"Resources": ids, "Synchronous": True})

    def _config(self) -> dict[str, Any]:
        storage = str(self.base_dir / "storage")
        return {
            "Name": "cxr-review-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,  # our C-STORE of results comes from an undeclared AE
            "DicomScuTimeout": 120,  # forwarding waits while the listener runs the model on a busy machine
            "UnknownSopClassAccepted": True,  # bad-input tests store what a PACS may hold
            "DicomModalities": {},
            "Plugins": [str(find_dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def _start(self) -> None:
        binary = find_binary()
        config = self.base_dir / "orthanc.json"
        for attempt in range(1, START_ATTEMPTS + 1):
            self.http_port, self.dicom_port = free_port(), free_port()
            config.write_text(json.dumps(self._config(), indent=1))
            with open(self.log_file, "ab") as log:
                self.process = subprocess.Popen(
                    [binary, str(config)], cwd=self.base_dir, stdout=log, stderr=subprocess.STDOUT
                )
            if self._wait_ready():
                return
            self._stop()
            if attempt == START_ATTEMPTS:
                raise OrthancUnavailable(f"Orthanc did not start:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    def _stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@contextlib.contextmanager
def running_orthanc() -> Iterator[OrthancServer]:
    """A fresh, empty Orthanc; stopped and deleted when the block exits."""
    base_dir = Path(tempfile.mkdtemp(prefix="cxr-orthanc-"))
    server = OrthancServer(base_dir=base_dir)
    try:
        server._start()
        yield server
    finally:
        try:
            server._stop()
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def orthanc_server() -> Iterator[OrthancServer]:
    """One throwaway Orthanc for the whole test session."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_orthanc())
        except OrthancUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server


@pytest.fixture
def orthanc(orthanc_server: OrthancServer) -> OrthancServer:
    """The session's Orthanc, emptied of studies for this test."""
    orthanc_server.clear()
    return orthanc_server
