# The gradwire service. Build: docker build -t gradwire .   Run: docker compose up (see
# docker-compose.yml and README.md, "Deployment").
#
# Everything installed comes from the committed locks (requirements/*.txt: exact versions, checked
# against their hashes), the build tools included: the image holds what CI tested. The first
# stage builds gradwire's wheel with the locked setuptools; the image installs the locks LOCKS
# names and then the wheel, and keeps neither the sources nor the build tools' output. "server"
# is the server's dependencies (the image serves); "otel" adds OpenTelemetry tracing, which stays
# off unless the OTEL_* variables configure an exporter (--build-arg LOCKS=server leaves it out);
# "ray" is the server's with Ray (--build-arg LOCKS="ray otel": the image of a Ray cluster's nodes).
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/server.txt requirements/server.txt
RUN pip install --require-hashes --no-deps -r requirements/server.txt
COPY pyproject.toml README.md ./
COPY engine engine
COPY service service
COPY storage storage
COPY client client
COPY proto proto
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
ARG LOCKS="server otel"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /wheels
COPY requirements/server.txt requirements/otel.txt requirements/ray.txt /locks/
# pip compiles the installed modules here, once: the user below may not write beside them, and
# the healthcheck starts a fresh interpreter every ten seconds.
RUN pip install --require-hashes --no-deps $(for lock in $LOCKS; do echo "-r /locks/$lock.txt"; done) \
    && pip install --no-deps /wheels/gradwire-*.whl && rm -rf /wheels /locks
COPY docker/entrypoint.sh /usr/local/bin/gradwire-entrypoint
RUN chmod 0755 /usr/local/bin/gradwire-entrypoint \
    && groupadd --system --gid 10001 gradwire \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/gradwire \
        --shell /usr/sbin/nologin gradwire \
    && mkdir /data && chown 10001:10001 /data

# A numeric user, so that a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/gradwire
# The SQLite database lives in /data when no GRADWIRE_DATABASE_URL is given; the volume keeps
# it when the container is replaced. Listen on every interface inside the container: the
# compose file publishes the port on the host's loopback only.
VOLUME /data
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    GRADWIRE_ADDRESS=0.0.0.0:50051 GRADWIRE_HTTP_ADDRESS=0.0.0.0:8080 GRADWIRE_DATA_DIR=/data
# gRPC; HTTP (the open inference protocol's REST endpoints); Prometheus metrics, where
# GRADWIRE_METRICS_ADDRESS serves them (compose: 0.0.0.0:9464).
EXPOSE 50051 8080 9464
# One grpc.health.v1 Check against the server's own port (GRADWIRE_ADDRESS): SERVING or not.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["gradwire-probe"]
# BLAS and OpenMP threads from the container's CPU limit, then the command as PID 1.
ENTRYPOINT ["gradwire-entrypoint"]
CMD ["gradwire", "serve"]
