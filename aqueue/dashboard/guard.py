"""Who may use the dashboard: HTTP Basic credentials or a token, and CSRF tokens for actions.

`Guard` is an ASGI middleware. With `basic=("user", "password")` a request needs those
credentials (`Authorization: Basic`); with `token`, either `Authorization: Bearer TOKEN`, the
cookie the dashboard sets, or `?token=TOKEN` once (answered with a redirect that sets the cookie
and drops the token from the address). Without either, every request passes (the dashboard
binds to 127.0.0.1 unless told otherwise). Every answer carries headers that keep the pages out
of frames and scripts to the dashboard's own.

Actions are POSTs whose form carries `Csrf.token`, a secret drawn once per process; a POST
without it is refused (403), so another site cannot make a signed-in browser act.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["COOKIE", "Csrf", "Guard", "parse_credentials"]

COOKIE = "aqueue_dashboard_token"

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


def parse_credentials(text: str) -> tuple[str, str]:
    """Split `user:password` (for `--auth`); ValueError saying what to pass otherwise."""
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise ValueError("--auth takes USER:PASSWORD, both non-empty")
    return user, password


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class Csrf:
    """The per-process secret each action's form carries in a hidden field."""

    FIELD = "csrf"

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)

    def valid(self, given: object) -> bool:
        """Whether `given` (the form's field) is this process's token."""
        return isinstance(given, str) and _same(given, self.token)


class Guard:
    """Refuse requests without the dashboard's credentials; add security headers to answers."""

    def __init__(
        self, app: ASGIApp, *, basic: tuple[str, str] | None = None, token: str | None = None
    ) -> None:
        self.app = app
        self.basic = basic
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 (or redirect to set the token's cookie), or pass the request on."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refused = self._refusal(scope)
        if refused is not None:
            await refused(scope, receive, secured)
            return
        await self.app(scope, receive, secured)

    def _refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        authorization = headers.get("authorization", "")
        if self.basic is not None and not self._basic_ok(authorization):
            return PlainTextResponse(
                "the dashboard needs a user and password",
                401,
                {"WWW-Authenticate": 'Basic realm="aqueue dashboard", charset="UTF-8"'},
            )
        if self.token is None:
            return None
        if authorization.startswith("Bearer ") and _same(authorization[7:], self.token):
            return None
        cookies = headers.get("cookie", "")
        for part in cookies.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and _same(value, self.token):
                return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        if any(key == "token" and _same(value, self.token) for key, value in query):
            rest = urlencode([(key, value) for key, value in query if key != "token"])
            redirect = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), 303)
            redirect.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return redirect
        return PlainTextResponse("the dashboard needs its token: open it with ?token=TOKEN", 401)

    def _basic_ok(self, authorization: str) -> bool:
        assert self.basic is not None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        return _same(user, self.basic[0]) & _same(password, self.basic[1])
