"""Domain errors. Each carries the HTTP status it maps to; `service.app` turns
them into the one JSON error body. Nothing here imports falcon."""

from __future__ import annotations


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


class PayloadTooLarge(ServiceError):
    status = 413


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
