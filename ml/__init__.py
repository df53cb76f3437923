"""Machine-learning core of cxr-review: architectures, CAM, data, training, evaluation, inference.

Nothing in this package imports the web service (`app`), FastAPI or SQLAlchemy; it works from the
command line alone (`python -m ml --help`).
"""

CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral", "covid19")
"""The four classes, in the order used by every head, tensor, table and API payload."""

__all__ = ["CLASSES"]
