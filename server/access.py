"""Who may connect: public, API key, signed URLs (HMAC, expiring, single-use), an Origin allow-list.

Signed URLs work as ElevenLabs' do: a server-side app holding an API key asks
``GET /v1/convai/conversation/get-signed-url?agent_id=…`` for a URL that carries a
``conversation_signature``; a browser connects with it once, before it expires.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class AccessMode(str, enum.Enum):
    PUBLIC = "public"
    API_KEY = "api_key"
    SIGNED = "signed"


@dataclass
class AccessPolicy:
    mode: AccessMode = AccessMode.PUBLIC
    api_keys: frozenset[str] = frozenset()
    allowed_origins: frozenset[str] = frozenset()  # empty: any origin
    signed_url_ttl_s: float = 900.0
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    clock: Callable[[], float] = time.time
    _used: dict[str, float] = field(default_factory=dict)

    # -- signatures ------------------------------------------------------------------------------------
    def sign(self, agent_id: str) -> str:
        expires = int(self.clock() + self.signed_url_ttl_s)
        nonce = secrets.token_urlsafe(12)
        payload = f"{agent_id}|{expires}|{nonce}"
        mac = hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()
        return _b64(payload.encode()) + "." + _b64(mac)

    def verify(self, agent_id: str, signature: str) -> str | None:
        """None if valid (and now used up); else why not."""
        try:
            p64, m64 = signature.split(".", 1)
            payload = _unb64(p64)
            mac = _unb64(m64)
        except (ValueError, TypeError):
            return "malformed conversation_signature"
        if not hmac.compare_digest(hmac.new(self.secret, payload, hashlib.sha256).digest(), mac):
            return "invalid conversation_signature"
        try:
            signed_agent, expires_s, nonce = payload.decode().rsplit("|", 2)
            expires = int(expires_s)
        except ValueError:
            return "malformed conversation_signature"
        if signed_agent != agent_id:
            return "conversation_signature was issued for another agent"
        now = self.clock()
        if now > expires:
            return "conversation_signature has expired"
        for n in [n for n, t in self._used.items() if t < now]:  # forget expired nonces
            del self._used[n]
        if nonce in self._used:
            return "conversation_signature was already used"
        self._used[nonce] = expires
        return None

    # -- checks ----------------------------------------------------------------------------------------
    def check_origin(self, origin: str | None, allowed: frozenset[str] | None = None) -> str | None:
        allowed = self.allowed_origins if allowed is None else allowed
        if not allowed or origin is None:
            # Non-browser clients send no Origin; the allow-list protects browsers from other sites.
            return None
        if origin.rstrip("/") not in {o.rstrip("/") for o in allowed}:
            return f"origin {origin!r} is not allowed"
        return None

    def check_api_key(self, key: str | None) -> str | None:
        if not self.api_keys:
            return "this server has no API keys configured"
        if key is None:
            return "missing xi-api-key header"
        if not any(hmac.compare_digest(key, k) for k in self.api_keys):
            return "invalid xi-api-key"
        return None

    def rules_for(self, spec: Mapping[str, Any] | None) -> tuple[AccessMode, frozenset[str]]:
        """The mode and origin allow-list for one graph: its ``access:`` block where it sets them,
        the server's otherwise."""
        mode, origins = self.mode, self.allowed_origins
        if isinstance(spec, Mapping):
            if spec.get("mode") is not None:
                mode = AccessMode(spec["mode"])
            if spec.get("allowed_origins") is not None:
                origins = frozenset(spec["allowed_origins"])
        return mode, origins

    def check_connect(
        self,
        agent_id: str,
        *,
        api_key: str | None,
        signature: str | None,
        origin: str | None,
        mode: AccessMode | None = None,
        allowed_origins: frozenset[str] | None = None,
    ) -> tuple[int, str] | None:
        """None to admit; else an HTTP status and the reason. ``mode`` and ``allowed_origins``
        override the server's (a graph's own ``access:`` block)."""
        mode = self.mode if mode is None else mode
        why = self.check_origin(origin, self.allowed_origins if allowed_origins is None else allowed_origins)
        if why:
            return 403, why
        if signature is not None:
            # Whatever the mode, a signature that is presented must be good (and is used up).
            why = self.verify(agent_id, signature)
            return (401, why) if why else None
        if mode is AccessMode.PUBLIC:
            return None
        if mode is AccessMode.API_KEY:
            why = self.check_api_key(api_key)
            return (401, why) if why else None
        return (
            401,
            "this agent requires a signed URL (GET /v1/convai/conversation/get-signed-url with xi-api-key)",
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
