# syntax=docker/dockerfile:1
#
# The plexus server image:
#
#   docker build -t plexus:0.1.0 .
#   docker run --rm -p 6001:6001 \
#     -e PLEXUS_APP_ID=1001 -e PLEXUS_APP_KEY=my-key -e PLEXUS_APP_SECRET="$(openssl rand -hex 32)" \
#     plexus:0.1.0
#
# The build stage runs packaging/deb/build.sh, the script scripts/package-test.sh builds, installs
# and serves from on every test run; the runtime stage installs the .deb it made. So the image
# holds exactly the tested package: /usr/bin/plexus, /etc/plexus/plexus.toml (no secrets: its
# ${PLEXUS_APP_ID}, ${PLEXUS_APP_KEY}, ${PLEXUS_APP_SECRET} come from the environment) and the
# state directory /var/lib/plexus (the durable webhook queue; mount a volume there to keep
# undelivered webhooks across containers). Everything else is configured by PLEXUS_* variables
# (README, "Where settings come from").

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The same script as the tests; what it needs (dpkg-dev, binutils) is in the rust image already.
RUN packaging/deb/build.sh --out /out

FROM debian:${DEBIAN_RELEASE}-slim
# A fixed id, so Kubernetes' runAsUser/runAsNonRoot can check it (deploy/kubernetes). The
# package's postinst keeps an existing plexus user.
RUN groupadd --system --gid 10001 plexus \
 && useradd --system --uid 10001 --gid plexus --home-dir /var/lib/plexus --no-create-home \
      --shell /usr/sbin/nologin plexus
COPY --from=build /out/ /tmp/plexus-deb/
RUN apt-get update \
 && apt-get install -y --no-install-recommends /tmp/plexus-deb/plexus_*.deb \
 && rm -rf /var/lib/apt/lists/* /tmp/plexus-deb

# The installed config, with what differs in a container: metrics reachable by a scraper, JSON
# logs for the log collector. The app's credentials are not here: pass them at run time.
ENV PLEXUS_CONFIG=/etc/plexus/plexus.toml \
    PLEXUS_DATA_DIR=/var/lib/plexus \
    PLEXUS_METRICS__HOST=0.0.0.0 \
    PLEXUS_LOG_FORMAT=json

USER 10001:10001
WORKDIR /var/lib/plexus
# 6001: WebSocket /app/{key}, HTTP API, /up, /ready. 9601: Prometheus /metrics.
EXPOSE 6001 9601
# /up over plain HTTP with bash alone (the slim image has no curl); follows PLEXUS_PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PLEXUS_PORT:-6001} && printf 'GET /up HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM: clients are closed with 4200 and plexus exits 0 within shutdown_grace_secs (10 s);
# give `docker stop` more than that (`docker stop -t 20`) or it kills plexus mid-way.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/plexus"]
CMD ["serve"]
