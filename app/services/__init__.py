"""The service layer: all queries, file I/O and model calls. Routes (API and pages) call these.

Functions that touch the database are keyword-only and take the SQLAlchemy `session` first; they
flush but leave committing to the function that owns the unit of work (documented per function).
"""
