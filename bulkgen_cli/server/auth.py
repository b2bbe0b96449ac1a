"""Who is calling: a bearer token, looked up by its hash (tokens.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bulkgen_cli.ops import tokens
from bulkgen_cli.server.access import StoreAccess
from bulkgen_cli.server.problems import unauthorized

bearer = HTTPBearer(auto_error=False, description="A token from `bulkgen token create --user NAME`.")


@dataclass(frozen=True)
class Caller:
    user: str
    admin: bool
    email: str | None


def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """The token's user; 401 (with WWW-Authenticate: Bearer) without a live token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("send `Authorization: Bearer TOKEN` with a token from `bulkgen token create`.")
    access: StoreAccess = request.app.state.access
    token = access.call(lambda store: tokens.authenticate(store, credentials.credentials))
    if token is None:
        raise unauthorized("the bearer token is not valid (unknown or revoked).")
    request.scope.setdefault("state", {})["user"] = token.userId  # for the access log (edge.AccessLog)
    return Caller(token.userId, token.admin, token.email)
