"""API tokens of `bulkgen serve`, as a library: create, authenticate, list, revoke.

A token is 32 random bytes (URL-safe text with a `bgk_` prefix), shown once;
the store keeps only its SHA-256. A slow password hash (bcrypt, scrypt) exists
to make guessing a low-entropy password expensive; a 256-bit random token
cannot be guessed, so one fast hash is enough and keeps every request's lookup
a single indexed read.
"""

from __future__ import annotations

import hashlib
import secrets

from bulkgen_cli.core.channels import EMAIL
from bulkgen_cli.core.errors import NotFound, UsageError
from bulkgen_cli.core.model import ApiToken, utcnow
from bulkgen_cli.store.base import Store
from bulkgen_cli.core.text import quoted

PREFIX = "bgk_"
TOKEN_BYTES = 32
USER_LIMIT = 100


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(store: Store, user: str, admin: bool = False, email: str | None = None) -> tuple[ApiToken, str]:
    """A new token for `user`: (its stored record, the token itself, to show once)."""
    user = user.strip()
    if not user or len(user) > USER_LIMIT or any(ord(c) < 32 for c in user):
        raise UsageError(f"--user must be a name of 1 to {USER_LIMIT} printable characters.")
    if email is not None and not EMAIL.fullmatch(email):
        raise UsageError(f"--email {quoted(email)} is not an e-mail address.")
    token = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    record = ApiToken(id=secrets.token_hex(8), userId=user, token_hash=token_hash(token), admin=admin, email=email,
                      created_at=utcnow())
    store.add_token(record)
    return record, token


def authenticate(store: Store, token: str) -> ApiToken | None:
    """The live token's record, or None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    return store.token_by_hash(token_hash(token))


def revoke(store: Store, token_id: str) -> ApiToken:
    """Revoke a token by its id (from `token list`); NotFound when there is no live one."""
    if not store.revoke_token(token_id, utcnow()):
        raise NotFound(f"no live token {quoted(token_id)}", cli=" (see `bulkgen token list`).", http=".")
    return next(t for t in store.list_tokens() if t.id == token_id)
