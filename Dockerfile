# syntax=docker/dockerfile:1

# Production image for tuneforge: one static binary serving every role
# (api, worker, migrate, apikey) selected by the first argument.
#
#   docker build -t tuneforge:latest .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... tuneforge:latest api

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
 && mkdir -p /out/data

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
# Writable scratch directory for the non-root user (uid 65532).
COPY --from=build --chown=65532:65532 /out/data /var/lib/tuneforge

ENV TUNEFORGE_HTTP_ADDR=0.0.0.0:8080 \
    TUNEFORGE_DATA_DIR=/var/lib/tuneforge

USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tuneforge"]
CMD ["api"]
