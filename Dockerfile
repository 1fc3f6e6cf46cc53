# syntax=docker/dockerfile:1

# Production images for tuneforge.
#
# The default target: one static binary serving every role (api, worker,
# migrate, apikey) selected by the first argument.
#
#   docker build -t tuneforge:latest .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... tuneforge:latest api
#
# Target trainer-gpu: a training worker with the command trainer, running
# trainers/hf/train.py on an NVIDIA GPU (compose's trainer-gpu service).
#
#   docker build --target trainer-gpu -t tuneforge-trainer-gpu:latest .

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
# The official golang image pins GOTOOLCHAIN=local; allow fetching the exact
# toolchain go.mod asks for when the cached base image is an older 1.26.x.
ENV CGO_ENABLED=0 \
    GOTOOLCHAIN=auto
# The `nodev` tag leaves out the embedded development Temporal server and UI
# (package devserver), which only `tuneforge dev` and the integration tests use.
RUN --mount=type=bind,target=. \
    --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -tags nodev -ldflags="-s -w" -o /out/tuneforge ./cmd/tuneforge \
 && mkdir -p /out/data/adapters

# The GPU training worker. It installs trainers/hf's dependencies from the
# project's lock (uv.lock, the same one `make venv` uses; the torch wheel
# brings its own CUDA libraries), without the test and serving groups: GPU
# hosts serve with vLLM's own image. The CUDA base image carries the NVIDIA
# container toolkit's settings, which mount the driver and nvidia-smi (the
# worker checks its GPUs against the pool with it).
# torch 2.13's wheel is built for CUDA 13, which needs an NVIDIA driver of
# the 580 series or newer on the host.
FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS trainer-gpu
# tini as PID 1 reaps what a killed trainer's process group leaves behind.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
# The lock before the script, so editing train.py keeps this layer. uv
# fetches the Python 3.11 the lock is for.
COPY pyproject.toml uv.lock /opt/tuneforge/
RUN --mount=type=cache,target=/root/.cache/uv \
    cd /opt/tuneforge \
 && UV_PROJECT_ENVIRONMENT=/opt/hf UV_PYTHON_INSTALL_DIR=/opt/python uv sync --locked --no-default-groups --python 3.11
COPY trainers/hf /opt/tuneforge/trainers/hf
COPY --from=build /out/tuneforge /usr/local/bin/tuneforge
# The same uid as the default image; its home is the data directory (work
# directories, and the caches torch may write).
RUN groupadd --system --gid 65532 tuneforge \
 && useradd --system --uid 65532 --gid 65532 --create-home --home-dir /var/lib/tuneforge tuneforge
ENV TUNEFORGE_DATA_DIR=/var/lib/tuneforge \
    TUNEFORGE_TRAINER=command \
    TUNEFORGE_TRAINER_CMD="/opt/hf/bin/python3 /opt/tuneforge/trainers/hf/train.py" \
    TUNEFORGE_MODEL_DIR=/models
USER 65532:65532
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/tuneforge"]
CMD ["worker", "--hardware", "gpu-a100-80gb", "--slots", "1", "--trainer", "command"]

# The default image, last so that a plain `docker build` makes it.
# Debian 12 distroless images reached end of support in September 2026.
FROM gcr.io/distroless/static-debian13:nonroot

ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tuneforge" \
      org.opencontainers.image.description="Fine-tuning job platform: REST API, Temporal workers and migrations in one binary" \
      org.opencontainers.image.source="https://github.com/tuneforge/tuneforge" \
      org.opencontainers.image.url="https://github.com/tuneforge/tuneforge" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian13:nonroot"

COPY --from=build /out/tuneforge /tuneforge
# Writable scratch directory for the non-root user (uid 65532). Its
# adapters/ is there so that a volume mounted on it (compose's adapters)
# starts owned by that user.
COPY --from=build --chown=65532:65532 /out/data /var/lib/tuneforge

ENV TUNEFORGE_HTTP_ADDR=0.0.0.0:8080 \
    TUNEFORGE_DATA_DIR=/var/lib/tuneforge

USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tuneforge"]
CMD ["api"]
