# The inference service image: the Falcon app under uvicorn, with no model inside.
#
# The model is fetched and sha256-checked at start from MODEL_URL / MODEL_SHA256, so one
# image serves every model the gate passes, and the image never holds model bytes.
#
# Build (nox -s build does this, tagging with the git sha):
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt \
#     --build-arg GIT_SHA=$(git rev-parse HEAD) --build-arg MODEL_SHA256=<sha256> -t onnx-ship:<sha> .
# The `ca` secret is optional: it is the CA bundle pip trusts, for networks whose TLS
# is intercepted; it never lands in a layer.

ARG BASE_IMAGE=public.ecr.aws/docker/library/python:3.11-slim

# ---------------------------------------------------------------------------------------
# builder: a virtualenv holding the service and its runtime dependencies (wheels only)
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, exactly as uv.lock pins them (with their hashes: pip refuses any
# other file), so the image runs what the gate and the tests ran, and a code change
# rebuilds only the last layer. uv only reads the lock here (`--locked` stops the build
# when pyproject.toml changed without `uv lock`); it stays in the builder.
COPY pyproject.toml uv.lock ./
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    uv_version=$(python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["tool"]["uv"]["required-version"])'); \
    python -m venv /opt/uv; \
    /opt/uv/bin/pip install --only-binary=:all: "uv${uv_version}"; \
    /opt/uv/bin/uv export --locked --no-default-groups --no-emit-project --format requirements.txt \
      --output-file /tmp/requirements.txt; \
    pip install --require-hashes --only-binary=:all: --no-deps -r /tmp/requirements.txt

# README.md* : the package's long description, optional so a checkout without it builds.
COPY pyproject.toml README.md* ./
COPY service ./service
COPY pipeline ./pipeline
# setuptools is a build-only dependency (pip fetches it into an isolated build env);
# the runtime needs no installer, so pip and setuptools leave the venv last.
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    pip install --no-deps . ; \
    pip check; \
    pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------------------
# runtime: the same base, the virtualenv, an unprivileged user; no compiler, no pip cache
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG GIT_SHA=unknown
ARG MODEL_SHA256=unknown
ARG SOURCE_URL=https://github.com/onnx-ship/onnx-ship
LABEL org.opencontainers.image.title="onnx-ship" \
      org.opencontainers.image.description="ONNX model inference service (Falcon ASGI on uvicorn)" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      model.sha256="${MODEL_SHA256}"

# A fixed numeric uid lets orchestrators check runAsNonRoot without reading /etc/passwd.
# /var/lib/onnx-ship is the service's only writable place: the model cache, the capture
# spool and Python's temporary files. It is owned by that uid here and declared a VOLUME
# below, because ECS gives a task volume mounted at exactly a VOLUME's path a copy of the
# image's directory, owner and mode included; any other task volume starts owned by root,
# mode 0755 (ECS developer guide, "Bind mounts"), and with readonlyRootFilesystem nothing
# else can be written. terraform/modules/service mounts its scratch volume here.
RUN useradd --uid 10001 --user-group --no-create-home --no-log-init --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 -m 0755 \
        /var/lib/onnx-ship /var/lib/onnx-ship/model-cache /var/lib/onnx-ship/tmp
VOLUME ["/var/lib/onnx-ship"]

COPY --from=builder /opt/venv /opt/venv

# HOST=0.0.0.0: inside a container the service must listen beyond loopback.
# WEB_CONCURRENCY: uvicorn workers, one per vCPU; on ECS the task definition sets it from
# the task's CPU (terraform/modules/service).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    WEB_CONCURRENCY=1 \
    MODEL_CACHE_DIR=/var/lib/onnx-ship/model-cache \
    TMPDIR=/var/lib/onnx-ship/tmp

USER 10001:10001
# Relative paths (the default local prediction capture) land in the volume too.
WORKDIR /var/lib/onnx-ship
EXPOSE 8080

# Slim images have no curl: ask the readiness route with the interpreter already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/v2/health/ready', timeout=2)"]

CMD ["python", "-m", "service"]
