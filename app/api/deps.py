"""Request dependencies as Annotated aliases: the settings, a session that owns the request's
transaction, the current owner from the bearer key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session

from app.core.errors import Unauthorized
from app.core.settings import Settings
from app.db import queries
from app.db.models import Owner


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


# declares the bearer scheme in the OpenAPI document (Swagger's Authorize button); the key itself is
# read below, so a missing one gets this API's 401 message rather than a 403
bearer = HTTPBearer(auto_error=False, description="an API key: htl keys create --owner NAME")


INVALID_KEY = "the API key is not valid"


def failed_authentication(request: Request, detail: str) -> Unauthorized:
    """A 401 to raise, once this client address is within its budget of failed authentications (a
    429 with Retry-After past it: guessing keys, or a misconfigured client, cannot load the database)."""
    request.app.state.failed_auth.check(request.client.host if request.client else "")
    return Unauthorized(detail)


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise failed_authentication(
            request, "send an API key as 'Authorization: Bearer <key>' (create one with: htl keys create --owner NAME)"
        )
    return key.strip()


def _owner(request: Request, session: Session, key: str) -> Owner:
    owner = queries.owner_for_key(session=session, key=key)
    if owner is None:
        raise failed_authentication(request, INVALID_KEY)
    request.app.state.rate_limiter.check(str(owner.id))
    return owner


def current_owner(request: Request, session: SessionDep, _scheme=Depends(bearer)) -> Owner:
    return _owner(request, session, bearer_key(request))


def owner_without_session(request: Request, _scheme=Depends(bearer)) -> Owner:
    """The owner, looked up in a session of its own that is closed before the route runs: for routes
    that stream a body or work for long, which must not hold a pooled connection meanwhile."""
    key = bearer_key(request)
    with request.app.state.sessionmaker() as session:
        owner = _owner(request, session, key)
        session.expunge(owner)
    return owner


CurrentOwner = Annotated[Owner, Depends(current_owner)]
UploadOwner = Annotated[Owner, Depends(owner_without_session)]
