"""Domain errors. Each carries the HTTP status it maps to; `service.app` turns
them into the one JSON error body. Nothing here imports falcon."""

from __future__ import annotations

from collections.abc import Sequence


class ServiceError(Exception):
    """A failure the client can act on; `status` is its HTTP status code."""

    status = 400
    # Response headers the status calls for (e.g. WWW-Authenticate with a 401).
    headers: dict[str, str] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    """No valid bearer token; `error` is RFC 6750's error code (section 3.1), if any."""

    status = 401

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        challenge = 'Bearer realm="predict"'
        if error:
            challenge += f', error="{error}"'
        self.headers = {"WWW-Authenticate": challenge}


class UnsupportedMediaType(ServiceError):
    status = 415


class UnsupportedContentCoding(UnsupportedMediaType):
    """A Content-Encoding the service cannot undo. RFC 9110 section 12.5.3: such a 415
    ought to carry Accept-Encoding, listing the codings the service does accept."""

    def __init__(self, unknown: Sequence[str], accepted: Sequence[str]) -> None:
        super().__init__(
            f"Content-Encoding {', '.join(unknown)} is not supported; use one of "
            f"{', '.join(accepted)} (or none)"
        )
        self.headers = {"Accept-Encoding": ", ".join(accepted)}


class UnknownMethod(ServiceError):
    """A request method this server does not know; `method` is None when the parser could
    not read one.

    RFC 9110 section 9.1 says a server SHOULD answer an unrecognized method with 501; this
    one answers 400 on purpose. The load balancer forwards any method token, and every
    5xx a target answers counts toward the alarm that rolls a deployment back
    (HTTPCode_Target_5XX_Count; terraform/modules/service, "Alarms"): with 501, anyone
    could roll a release back with a handful of `FOO /` requests a minute.
    """

    status = 400

    def __init__(self, method: str | None, implemented: Sequence[str]) -> None:
        known = f"{', '.join(implemented[:-1])} and {implemented[-1]}"
        problem = (
            f"method {method!r} is not implemented by this server"
            if method is not None
            else "the request does not start with a method this server implements"
        )
        super().__init__(
            f"{problem}; it implements {known} (method names are case-sensitive, "
            "RFC 9110 section 9.1)"
        )


class PayloadTooLarge(ServiceError):
    status = 413


class BodyTimeout(ServiceError):
    """The request body did not arrive in full within `seconds` of the service starting to
    read it (BODY_TIMEOUT_SECONDS). RFC 9110 section 15.5.9, 408 Request Timeout: the
    server did not receive a complete request within the time it was prepared to wait, and
    SHOULD send the "close" connection option; the rest of the body is not read."""

    status = 408
    headers = {"Connection": "close"}

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the request body did not arrive within {seconds:g} s of the service starting to "
            f"read it, so this connection is closed: send the whole body within {seconds:g} s"
        )


class NotServedThroughProxy(ServiceError):
    """A route served only to callers inside the network, asked for through a proxy."""

    status = 404

    def __init__(self, path: str) -> None:
        super().__init__(
            f"no route {path!r} through a load balancer or proxy: scrape it from inside the "
            "VPC, at the task's own address"
        )


class ModelNotFound(ServiceError):
    status = 404

    def __init__(self, name: str, version: str | None, served: str, served_version: str) -> None:
        wanted = f"{name!r} version {version!r}" if version else repr(name)
        super().__init__(
            f"model {wanted} is not served here; this server serves {served!r} "
            f"version {served_version!r}"
        )


class NotReady(ServiceError):
    status = 503

    def __init__(self) -> None:
        super().__init__("the model is not loaded yet; retry when /v2/health/ready answers 200")


class ModelLoadError(Exception):
    """The model could not be fetched, verified or opened: the service must not start."""
