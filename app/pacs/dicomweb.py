"""A small DICOMweb client for one PACS: QIDO-RS instance search, WADO-RS retrieval of an instance's
stored bytes, STOW-RS of datasets. Search and store go through `dicomweb_client`; retrieval asks for
the instance as stored (`transfer-syntax=*`), so the bytes are the PACS's own and the same on every
retrieval (content addressing makes a second retrieval of one instance a no-op).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from app.config import Settings

VIEW_POSITION = "00185101"
SOP_CLASS_UID = "00080016"
PAGE_SIZE = 200


class PacsError(RuntimeError):
    """The PACS could not be reached or answered with an error; `str()` says what failed."""


@dataclass(frozen=True)
class InstanceRef:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None = None
    view_position: str | None = None
    modality: str | None = None


def _value(attrs: dict[str, Any], tag: str) -> str | None:
    values = attrs.get(tag, {}).get("Value")
    return str(values[0]) if values else None


class Pacs:
    def __init__(self, settings: Settings) -> None:
        if not settings.dicomweb_url:
            raise PacsError(
                "CXR_DICOMWEB_URL is not set: the DICOMweb root of the PACS, e.g. http://pacs:8042/dicom-web"
            )
        self.url = settings.dicomweb_url.rstrip("/")
        self.timeout = settings.dicomweb_timeout_seconds
        self.session = requests.Session()
        if settings.dicomweb_username is not None and settings.dicomweb_password is not None:
            self.session.auth = (settings.dicomweb_username, settings.dicomweb_password.get_secret_value())
        if settings.dicomweb_token is not None:
            self.session.headers["Authorization"] = f"Bearer {settings.dicomweb_token.get_secret_value()}"
        self.client = DICOMwebClient(url=self.url, session=self.session, timeout=self.timeout)
        # No retries inside a request (dicomweb_client's back-off held a refused connection for 30 s):
        # a failed pass is retried by the next one, a failed instance by its attempt count.
        self.client.set_http_retry_params(retry=False)

    def close(self) -> None:
        self.session.close()

    def find_instances(self, *, modalities: Sequence[str], lookback_days: int) -> Iterator[InstanceRef]:
        """Every instance of the given modalities (in studies of the last `lookback_days` days; 0: all)."""
        filters: dict[str, str] = {}
        if lookback_days > 0:
            since = datetime.date.today() - datetime.timedelta(days=lookback_days)
            filters["StudyDate"] = f"{since:%Y%m%d}-"
        for modality in modalities:
            offset = 0
            while True:
                try:
                    page = self.client.search_for_instances(
                        search_filters={**filters, "Modality": modality},
                        fields=[VIEW_POSITION, SOP_CLASS_UID, "00080060"],
                        limit=PAGE_SIZE,
                        offset=offset,
                    )
                except (requests.RequestException, ValueError) as exc:
                    raise PacsError(f"QIDO-RS search of {self.url} failed: {exc}") from exc
                for attrs in page:
                    study, series, sop = (_value(attrs, t) for t in ("0020000D", "0020000E", "00080018"))
                    if study and series and sop:
                        yield InstanceRef(
                            study, series, sop, _value(attrs, SOP_CLASS_UID), _value(attrs, VIEW_POSITION),
                            _value(attrs, "00080060") or modality,
                        )  # fmt: skip
                if len(page) < PAGE_SIZE:
                    break
                offset += len(page)

    def retrieve(self, ref: InstanceRef) -> bytes:
        """The instance's Part 10 bytes as the PACS stores them (WADO-RS, multipart/related)."""
        url = (
            f"{self.url}/studies/{ref.study_instance_uid}/series/{ref.series_instance_uid}"
            f"/instances/{ref.sop_instance_uid}"
        )
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        try:
            response = self.session.get(url, headers={"Accept": accept}, timeout=self.timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise PacsError(f"WADO-RS retrieve of {ref.sop_instance_uid} failed: {exc}") from exc
        parts = multipart_parts(response.headers.get("Content-Type", ""), response.content)
        if len(parts) != 1:
            raise PacsError(f"WADO-RS retrieve of {ref.sop_instance_uid} returned {len(parts)} parts, expected 1")
        return parts[0]

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS; raises PacsError unless the PACS stored every dataset."""
        try:
            reply = self.client.store_instances(list(datasets))
        except (requests.RequestException, ValueError) as exc:
            raise PacsError(f"STOW-RS to {self.url} failed: {exc}") from exc
        failed = reply.get("FailedSOPSequence", []) if reply is not None else []
        if failed:
            reasons = ", ".join(f"{f.ReferencedSOPInstanceUID} (reason {f.get('FailureReason')})" for f in failed)
            raise PacsError(f"STOW-RS: the PACS refused {reasons}")


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related message (RFC 2387), in order."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)  # boundary=..., type=...
    boundary = params.get("boundary", "").strip('"')
    if not content_type.lower().startswith("multipart/") or not boundary:
        raise PacsError(f"expected a multipart/related reply, got {content_type or 'no Content-Type'}")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        _head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise PacsError("malformed multipart reply: a part without headers")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts
