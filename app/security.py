"""Passwords, tokens and CSRF values. No database access here (that lives in app/services/accounts.py).

- Passwords: argon2id (argon2-cffi defaults), verified in constant time, re-hashed when parameters change.
- API tokens and session cookies: 256-bit random values; only their sha256 is stored. A fast hash is
  enough because the input has full entropy (nothing to brute-force), and it makes lookups O(1).
- CSRF: a random per-session value compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

API_TOKEN_PREFIX = "cxr_"
TOKEN_BYTES = 32
TOKEN_DISPLAY_PREFIX_LEN = 12
"""Characters of a token kept in clear (`cxr_` + 8) so humans can name a token to revoke it."""

_hasher = PasswordHasher()
# A hash of a random password, verified against when the user does not exist, so a login takes the
# same time whether or not the name is known.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """True when `password` matches; a missing hash still costs one argon2 verification."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def generate_password() -> str:
    """A random password for generated accounts (~120 bits, URL-safe)."""
    return secrets.token_urlsafe(15)


def generate_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def generate_session_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def generate_csrf_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """sha256 hex of a high-entropy token: what the database stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_display_prefix(token: str) -> str:
    return token[:TOKEN_DISPLAY_PREFIX_LEN]


def tokens_equal(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
