"""Request dependencies as Annotated aliases: the settings, a session that owns the request's
transaction, the current owner from the bearer key."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db import queries
from app.db.models import Owner
from app.errors import Unauthorized
from app.settings import Settings


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


def current_owner(request: Request, session: SessionDep) -> Owner:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' (create one with: htl keys create --owner NAME)")
    owner = queries.owner_for_key(session=session, key=key.strip())
    if owner is None:
        raise Unauthorized("the API key is not valid")
    return owner


CurrentOwner = Annotated[Owner, Depends(current_owner)]
