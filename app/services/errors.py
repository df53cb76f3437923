"""Domain errors raised by services; `app.main` maps each to an HTTP status with a JSON `detail`."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class. `str(exc)` is a message fit to show the user."""

    status_code = 400


class NotFoundError(ServiceError):
    status_code = 404


class ConflictError(ServiceError):
    status_code = 409


class InvalidInputError(ServiceError):
    """Well-formed request with values the service cannot accept (unknown model id, bad reason tag...)."""

    status_code = 422


class PayloadTooLargeError(ServiceError):
    status_code = 413


class ThrottledError(ServiceError):
    """Too many failed logins; `retry_after` seconds until the window frees up."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelUnavailableError(ServiceError):
    """A registered model whose checkpoint is missing or no longer matches its recorded sha256."""

    status_code = 503


class OverloadedError(ServiceError):
    """The inference queue is full: nothing was written; `retry_after` seconds is the estimated wait."""

    status_code = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
