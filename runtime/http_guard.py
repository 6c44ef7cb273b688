"""Who may ask the daemon what: the Host header, the token, the page's cookie, signed URLs.

Patient images and everything derived from them (GET /live, /results, /events, /snapshots)
need the token, as every state change (POST) does. A browser gives it once on the page
(POST /login answers with an HttpOnly SameSite=Strict session cookie, good for GETs only) or
uses a short-lived signed URL for the MJPEG stream (GET /live/url -> /live?exp=..&sig=..).
Every request's Host must name this daemon (loopback names, the bound address, this host's
name, `http.allowed_hosts`): a web page whose DNS name was rebound to 127.0.0.1 sends its
own name and is refused (421), so it cannot read the camera from the pathologist's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import platform
import time

COOKIE = "lucida_session"
SIGNED_URL_MAX_S = 300  # longest life of a signed /live URL (s)
PRIVATE_GET = ("/live", "/results", "/events", "/snapshots")  # path prefixes
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "localhost.localdomain"}


def is_loopback(bind: str) -> bool:
    """True when `bind` (an address or name) only listens on this machine."""
    if bind in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra=()) -> set[str]:
    """Host names (no port, lower case) a request may carry for a daemon bound to `bind`."""
    names = set(LOOPBACK_NAMES) | {h.lower() for h in extra}
    if bind not in ("0.0.0.0", "::", ""):
        names.add(bind.lower())
    if not is_loopback(bind):  # reachable from the LAN: its own name too
        node = platform.node().lower()
        if node:
            names |= {node, f"{node}.local"}
    return names


def host_name(header: str | None) -> str | None:
    """The name part of a Host header ('[::1]:8080' -> '::1', 'a.b:80' -> 'a.b'), lower case."""
    if not header:
        return None
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[1:end] if end > 0 else None
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def host_ok(header: str | None, allowed: set[str], bind: str) -> bool:
    name = host_name(header)
    if name is None:
        return False
    if name in allowed:
        return True
    if bind in ("0.0.0.0", "::"):  # any interface: a literal address of this host is fine
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    """The page's cookie value: a MAC of the token (changes when the token changes)."""
    return _mac(token, "lucida-session")


def cookie_ok(value: str, token: str) -> bool:
    return hmac.compare_digest(
        value.encode("utf-8", "surrogateescape"), session_value(token).encode()
    )


def sign_path(token: str, path: str, ttl_s: float = 60, now: float | None = None) -> str:
    """`path?exp=UNIX&sig=HEX`, valid for ttl_s seconds."""
    exp = int((now or time.time()) + min(ttl_s, SIGNED_URL_MAX_S))
    return f"{path}?exp={exp}&sig={_mac(token, f'{path}|{exp}')}"


def signature_ok(token: str, path: str, exp: str, sig: str, now: float | None = None) -> bool:
    try:
        t = int(exp)
    except ValueError:
        return False
    now = now or time.time()
    if not now <= t <= now + SIGNED_URL_MAX_S:
        return False
    return hmac.compare_digest(sig.encode("ascii", "replace"), _mac(token, f"{path}|{t}").encode())


def bearer_ok(header: str, token: str) -> bool | None:
    """None: no bearer token given; else whether it is the right one (constant time; bytes
    that are not UTF-8 are compared as given, never decoded)."""
    given = header[7:] if header.startswith("Bearer ") else ""
    if not given:
        return None
    raw = given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(raw, token.encode())


def malformed(header: str) -> bool:
    """An Authorization header no token could match: bytes outside printable ASCII."""
    return any(not (32 <= ord(c) < 127) for c in header)


def private(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PRIVATE_GET)
