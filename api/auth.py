"""Authentication and authorisation as a dependency: `Depends(require("identify"))` on a route. It
runs before the route reads its body (routes declare none to FastAPI), so a request without a
valid key in scope is answered 401 / 403 having read and changed nothing; then the key's rate
limit is charged."""
from __future__ import annotations

from fastapi import Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from faceverify.access.keys import ApiKey

bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="an API key (`faceverify keys add NAME --scope ... --gallery G`)")


def require(scope: str | None):
    """The dependency for a route needing `scope` (None: any valid key)."""

    async def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> ApiKey:
        service = request.app.state.service
        key = await run_in_threadpool(service.authenticate, credentials.credentials if credentials else None)
        if scope is not None:
            key.require(scope)
        service.limiter.take(key.key_id)
        return key

    return caller


def actor(key: ApiKey) -> str:
    """Who the audit trail credits: the key's name."""
    return f"key:{key.name}"
