"""API keys with names and roles: several at once (so one can be rotated out while its successor is live), each
known by a name that the audit log records instead of its secret.

`GENREID_API_KEYS` holds `name:role:secret` items separated by commas; `GENREID_API_KEY`, the older single key,
stays an admin key named `default`. Roles are ranked, each allowing what the ones below it allow:
  metrics  GET /metrics only (a Prometheus scraper)
  query    every read: /query, /query/batch, /transfer, GET /gallery routes and crops
  admin    also enrolment, relabel, merge and deletion
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import SecretStr

Role = Literal["metrics", "query", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)  # lowest first
LEGACY_KEY_NAME = "default"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: Role
    secret: SecretStr

    def allows(self, role: Role) -> bool:
        """Whether this key may do what `role` may."""
        return ROLES.index(self.role) >= ROLES.index(role)


def parse_api_keys(spec: str) -> tuple[ApiKey, ...]:
    """`name:role:secret[,name:role:secret...]` (the secret may hold ':' but not ','); ValueError names the item
    by position and name, never its secret."""
    keys = []
    for position, item in enumerate((part.strip() for part in spec.split(",")), start=1):
        if not item:
            continue
        name, role, secret = (item.split(":", 2) + ["", ""])[:3]
        if not _NAME.fullmatch(name):
            raise ValueError(f"api key {position}: the name must be 1-64 of A-Z a-z 0-9 _ . - "
                             "(write name:role:secret)")
        if role not in ROLES:
            raise ValueError(f"api key {name!r}: role {role!r} is not one of {', '.join(ROLES)}")
        if not secret:
            raise ValueError(f"api key {name!r}: the secret is empty")
        keys.append(ApiKey(name, role, SecretStr(secret)))
    return tuple(keys)


def key_ring(*, api_key: SecretStr | None, api_keys: SecretStr | None) -> tuple[ApiKey, ...]:
    """Every configured key: the legacy single key (admin) and the named ones; names and secrets unique."""
    keys = () if api_key is None else (ApiKey(LEGACY_KEY_NAME, "admin", api_key),)
    keys += () if api_keys is None else parse_api_keys(api_keys.get_secret_value())
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"api keys: a name is used twice ({', '.join(names)}); '{LEGACY_KEY_NAME}' is the "
                         "single api_key's")
    if len({key.secret.get_secret_value() for key in keys}) != len(keys):
        raise ValueError("api keys: two keys share a secret, so the audit log could not tell them apart")
    return keys


def match(keys: tuple[ApiKey, ...], presented: str) -> ApiKey | None:
    """The key whose secret is `presented`, comparing with every key in constant time (no early exit, so the
    time taken tells nothing about which key or how much of it matched)."""
    given = presented.encode()
    found = None
    for key in keys:
        if hmac.compare_digest(given, key.secret.get_secret_value().encode()):
            found = key
    return found
