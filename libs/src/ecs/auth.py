"""Bearer tokens with roles (DESIGN §6): HS256 with a local secret in the embedded default,
the issuer's keys (JWKS) in production."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import jwt

from .errors import Forbidden, MissingRole, Unauthorized


class Role(StrEnum):
    DISPATCHER = "dispatcher"
    COMMANDER = "commander"
    SUPPLY_OFFICER = "supply_officer"
    SHELTER_MANAGER = "shelter_manager"
    INFORMATION_OFFICER = "information_officer"
    DRILL_RUNNER = "drill_runner"
    AUDITOR = "auditor"


# Role sets the services grant, named once. A drill runner in a set acts on exercise objects
# only (``Principal.require_scope``).
OPERATORS: tuple[Role, ...] = (Role.DISPATCHER, Role.COMMANDER, Role.DRILL_RUNNER)
"""Day-to-day incident and unit work."""
COMMANDERS: tuple[Role, ...] = (Role.COMMANDER, Role.DRILL_RUNNER)
"""Decisions reserved to a commander: stage, level, merge and split, facts."""
READERS: tuple[Role, ...] = tuple(Role)
"""Every role may read."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's ``sub`` and its roles."""

    subject: str
    roles: frozenset[str]

    def require(self, *roles: Role) -> None:
        """Raises MissingRole (403) naming the roles wanted unless the caller holds one of them."""
        if not self.roles.intersection(roles):
            wanted = ", ".join(sorted(r.value for r in roles))
            raise MissingRole(
                f"this action needs one of the roles: {wanted}",
                required_roles=sorted(roles),
            )

    def is_drill_only(self, roles: tuple[Role, ...]) -> bool:
        """True when, of ``roles``, the caller holds only drill_runner: it may then act on
        exercise objects only (DESIGN §8)."""
        return Role.DRILL_RUNNER in self.roles and not self.roles.intersection(
            r for r in roles if r is not Role.DRILL_RUNNER
        )

    def require_scope(self, roles: tuple[Role, ...], exercise: bool, what: str) -> None:
        """Raises Forbidden (403) when the caller needs drill_runner for this action and the object
        (``what``, e.g. "incidents") is live; also when the caller holds none of ``roles``."""
        self.require(*roles)
        if self.is_drill_only(roles) and not exercise:
            raise Forbidden(f"a drill runner acts on exercise {what} only")


VERIFIED_CACHE_SIZE = 4096
"""Tokens a TokenVerifier remembers as verified (forgotten all at once when full)."""
VERIFIED_CACHE_S = 60.0
"""At most this long a verified token is taken again without checking its signature (never past
its ``exp``): a key the issuer withdrew stops working within this time."""


MAX_SUBJECT = 255
"""The longest token subject taken (characters): it is stored as the actor of every change."""


def usable_subject(subject: str) -> bool:
    """Whether ``subject`` can name who acted: 1 to MAX_SUBJECT characters, not blank, none of
    them a control character (U+0000–U+001F, U+007F–U+009F)."""
    return (
        0 < len(subject) <= MAX_SUBJECT
        and bool(subject.strip())
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in subject)
    )


class TokenVerifier:
    """Bearer tokens (HS256 under the local secret, or RS256/ES256 from the OIDC issuer's keys).

    A token verified once is remembered for up to ``VERIFIED_CACHE_S`` seconds and never past its
    ``exp``: checking a signature and the claims again on every request of a client costs more
    than the rest of a small request's authorisation."""

    def __init__(
        self,
        secret: str,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        self.secret = secret
        self.issuer = issuer
        self.audience = audience
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None
        self._verified: dict[str, tuple[Principal, float, float]] = {}  # token: (principal, exp, until)
        self._clock = time.time

    def issue(self, subject: str, roles: list[str], ttl_s: int = 12 * 3600) -> str:
        if self._jwks is not None:
            raise RuntimeError("tokens come from the OIDC issuer in this deployment")
        now = int(time.time())
        claims = {
            "sub": subject,
            "roles": sorted(set(roles)),
            "iat": now,
            "exp": now + ttl_s,
        }
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        now = self._clock()
        known = self._verified.get(token)
        if known is not None:
            principal, exp, until = known
            if now < exp and now < until:
                return principal
            del self._verified[token]
            if now >= exp:
                raise Unauthorized("invalid token: Signature has expired")
        try:
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["RS256", "ES256"],
                    issuer=self.issuer,
                    audience=self.audience,
                )
            else:
                claims = jwt.decode(
                    token,
                    self.secret,
                    algorithms=["HS256"],
                    issuer=self.issuer,
                    audience=self.audience,
                    options={"require": ["exp", "sub"]},
                )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        roles = claims.get("roles") or []
        if isinstance(roles, str):
            roles = roles.split()
        subject = claims.get("sub")
        if not isinstance(subject, str) or not usable_subject(subject):
            # It signs every change on the timeline and keeps an approver apart from an author.
            raise Unauthorized(f"invalid token: 'sub' must be 1 to {MAX_SUBJECT} printable characters, not blank")
        principal = Principal(subject=subject, roles=frozenset(str(r) for r in roles))
        exp = claims.get("exp")
        if isinstance(exp, int | float) and "nbf" not in claims:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (principal, float(exp), now + VERIFIED_CACHE_S)
        return principal
