# The gradwire service. Build: docker build -t gradwire .   Run: see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY service service
COPY storage storage
COPY client client
COPY proto proto
RUN pip install . && useradd --create-home --uid 10001 gradwire && mkdir /data && chown gradwire /data

USER gradwire
WORKDIR /home/gradwire
# Listen on every interface inside the container; the compose file publishes it on loopback.
ENV GRADWIRE_ADDRESS=0.0.0.0:50051 GRADWIRE_DATA_DIR=/data
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD python -c "from gradwire.client import Client; import sys; sys.exit(0 if Client('127.0.0.1:50051', timeout=2).healthy() else 1)"
CMD ["gradwire", "serve"]
