# syntax=docker/dockerfile:1
# egressd's container image: egressd and launcher as static binaries on a
# minimal Debian runtime that has the iptables tools `egressd firewall
# install` needs (the init step of a pod or a `docker run --network
# container:` sidecar). It runs as egressd's own non-root uid by default;
# only the firewall step runs as uid 0, with NET_ADMIN and NET_RAW alone.
# docs/deploy.md shows both steps; cmd/egressd/deploy_test.go checks that
# the paths, users and ports named here match the binaries' flags, and runs
# this build's `make build` line itself.
#
#   docker build --build-arg VERSION=$(git describe --tags) \
#                --build-arg COMMIT=$(git rev-parse --short=12 HEAD) -t egressd .

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN make build BINDIR=/out VERSION=${VERSION} COMMIT=${COMMIT}

FROM debian:bookworm-slim
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="egressd" \
      org.opencontainers.image.description="Filtered-egress sidecar with DNS enforcement for untrusted sandboxes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/egressd/egressd" \
      org.opencontainers.image.documentation="https://github.com/egressd/egressd/blob/main/docs/deploy.md" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
# iptables brings iptables, ip6tables and their -restore tools for both the
# nft and the legacy backend; nothing else is installed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65530 egressd \
 && useradd --system --uid 65530 --gid 65530 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin egressd
COPY --from=build /out/egressd /out/launcher /usr/local/bin/
COPY LICENSE /usr/share/doc/egressd/LICENSE
# A default policy that allows nothing; mount the real one over it (a
# ConfigMap, a bind mount): egressd reloads it when it changes.
COPY deploy/docker/policy.toml /etc/egressd/policy.toml
USER 65530:65530
ENTRYPOINT ["/usr/local/bin/egressd"]
CMD ["serve", "--policy", "/etc/egressd/policy.toml", "--dns-listen", "127.0.0.1:15053,[::1]:15053", "--transparent-listen", "127.0.0.1:15001,[::1]:15001", "--proxy-listen", "127.0.0.1:3128", "--admin-listen", "127.0.0.1:9901", "--log-format", "json", "--audit-log", "-"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/egressd", "health", "--admin", "127.0.0.1:9901", "--ready"]
