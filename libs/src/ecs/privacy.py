"""Personal data on a need-to-know basis (DESIGN §6). The roles that need to know see it whole;
every other role (the auditor included) sees it masked, so it knows it exists and can tell two
apart, but cannot call or identify anyone:

- callers' numbers and names (incident-intake): dispatchers and commanders (NEED_TO_KNOW);
- evacuees' names and origin addresses (shelter-registry): shelter managers and commanders
  (EVACUEES_NEED_TO_KNOW); their ID numbers and phones are never answered whole to anyone (they
  are kept encrypted, searched by keyed hash, and shown masked).

A service marks the answer models that hold personal data and passes its answers through
``disclose`` in the route::

    return disclose(await views.incident_detail(...), principal, CallerView)
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from .auth import Principal, Role
from .logs import mask_number

NEED_TO_KNOW: tuple[Role, ...] = (Role.DISPATCHER, Role.COMMANDER)
"""The roles that see callers' personal data whole."""

EVACUEES_NEED_TO_KNOW: tuple[Role, ...] = (Role.SHELTER_MANAGER, Role.COMMANDER)
"""The roles that see evacuees' names and origin addresses whole."""

M = TypeVar("M")


def may_see_personal(principal: Principal, roles: tuple[Role, ...] = NEED_TO_KNOW) -> bool:
    """Whether the caller holds one of ``roles`` (by default dispatcher or commander)."""
    return bool(principal.roles.intersection(roles))


def mask_personal(value: str) -> str:
    """A number keeps its first three and last two characters (``139******78``); a name its
    first character (``张*``, ``J***``)."""
    if sum(c.isdigit() for c in value) >= 5:
        return mask_number(value)
    return value[:1] + "*" * max(len(value) - 1, 1)


def _masked(model: BaseModel) -> BaseModel:
    update = {k: mask_personal(v) for k, v in model.__dict__.items() if isinstance(v, str) and v}
    return model.model_copy(update=update)


def _walk(value: Any, personal: tuple[type[BaseModel], ...]) -> Any:
    if isinstance(value, personal):
        return _masked(value)
    if isinstance(value, BaseModel):
        update = {}
        for key, item in value.__dict__.items():
            new = _walk(item, personal)
            if new is not item:
                update[key] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, list):
        items = [_walk(v, personal) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def disclose(answer: M, principal: Principal, *personal: type[BaseModel], roles: tuple[Role, ...] = NEED_TO_KNOW) -> M:
    """``answer`` as ``principal`` may see it: unchanged for the ``roles`` that need to know;
    otherwise every string field of every ``personal`` model inside it masked (``mask_personal``)."""
    if may_see_personal(principal, roles):
        return answer
    return _walk(answer, personal)


__all__ = ["EVACUEES_NEED_TO_KNOW", "NEED_TO_KNOW", "disclose", "mask_personal", "may_see_personal"]
