"""cxr-review web service."""
