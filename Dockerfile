# syntax=docker/dockerfile:1.7
# One image for every Keel service: `keel run gateway|projector|dashboard` (the default is the gateway).
#   docker build -t keel:0.1.0 .
#   docker run --rm -p 8700:8700 --env-file keel.env keel:0.1.0            # gateway
#   docker run --rm keel:0.1.0 run projector
# The base is pinned to an exact Python and Debian release; pin its digest too when you build
# (`docker buildx imagetools inspect python:3.11.16-slim-trixie`), so a rebuild cannot change it silently.
ARG PYTHON_IMAGE=python:3.11.16-slim-trixie

# ---------------------------------------------------------------- build: wheels for Keel and every dependency
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY keel ./keel
COPY schemas ./schemas
COPY projections ./projections
COPY consumers ./consumers
COPY producers ./producers
COPY deploy ./deploy
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler enters the image.
RUN pip wheel --wheel-dir /wheels --only-binary=:all: --no-binary=keel .

# ---------------------------------------------------------------- runtime: the wheels installed, nothing else
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="keel" \
      org.opencontainers.image.description="Keel services: gateway, projector, dashboard" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    KEEL_GATEWAY_HOST=0.0.0.0 \
    KEEL_PROJECTOR_HEALTH_HOST=0.0.0.0 \
    KEEL_DASHBOARD_HOST=0.0.0.0 \
    KEEL_LOG_JSON=true
# A fixed numeric uid lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 keel \
    && useradd --system --uid 10001 --gid keel --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin keel
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/keel-*.whl
WORKDIR /app
USER 10001:10001
EXPOSE 8700 8701 8702
ENTRYPOINT ["keel"]
CMD ["run", "gateway"]
