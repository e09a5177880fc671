"""Bearer-token authentication of the prediction and model routes.

A client sends `Authorization: Bearer <token>` (RFC 6750, section 2.1). The tokens
come from one setting, `API_TOKENS`: one or more tokens separated by commas or
whitespace, so a token can be rotated by serving the old and the new one for a while.
In AWS the task definition's `secrets` inject it from Secrets Manager (ECS developer
guide, "Pass Secrets Manager secrets through Amazon ECS environment variables"); the
pipeline reads the same secret and parses it with `parse_tokens`.

Health, readiness and `/metrics` stay open: the load balancer's health check carries no
token, and the load balancer never forwards `/metrics` (a listener rule answers 404),
so only scrapers inside the VPC reach it.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from service.errors import Unauthorized

# Routes any caller may use (their route templates).
PUBLIC_ROUTES = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
MIN_TOKEN_LENGTH = 16
_SEPARATORS = re.compile(r"[\s,]+")


class TokenError(ValueError):
    """A configured token cannot be used; the message says why and how to make one."""


def parse_tokens(value: str) -> tuple[str, ...]:
    """The tokens in an `API_TOKENS` value, split on commas and whitespace.

    Raises TokenError for a token `check_token` refuses.
    """
    tokens = tuple(token for token in _SEPARATORS.split(value.strip()) if token)
    for position, token in enumerate(tokens, start=1):
        check_token(token, position)
    return tokens


def check_token(token: str, position: int = 1) -> None:
    """Raises TokenError when `token` is shorter than 16 characters or holds a character
    a bearer token may not carry (RFC 6750, section 2.1), since no client could send it."""
    if len(token) < MIN_TOKEN_LENGTH or not TOKEN_PATTERN.match(token):
        raise TokenError(
            f"token {position} is not a usable bearer token: use at least "
            f"{MIN_TOKEN_LENGTH} letters, digits or -._~+/ (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


def bearer_header(token: str) -> dict[str, str]:
    """The request header that presents `token`."""
    return {"Authorization": f"Bearer {token}"}


class BearerAuth:
    """Falcon middleware: every matched route outside PUBLIC_ROUTES needs a valid token.

    The presented token is hashed and compared with every configured token's hash
    through `hmac.compare_digest`, with no early exit, so neither the time taken nor its
    length says how much of a token was right.
    """

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._digests = tuple(_digest(token) for token in tokens)

    async def process_resource(self, req, resp, resource, params) -> None:
        if req.uri_template in PUBLIC_ROUTES:
            return
        header = req.get_header("Authorization")
        if not header:
            raise Unauthorized("this route needs an Authorization: Bearer <token> header")
        scheme, _, presented = header.partition(" ")
        # The scheme is case-insensitive (RFC 9110, section 11.1).
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized(
                "the Authorization header must be `Bearer <token>`", error="invalid_request"
            )
        if not self.accepts(presented.strip()):
            raise Unauthorized("the bearer token is not valid here", error="invalid_token")

    def accepts(self, presented: str) -> bool:
        digest = _digest(presented)
        matched = False
        for expected in self._digests:
            matched |= hmac.compare_digest(digest, expected)
        return matched


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
