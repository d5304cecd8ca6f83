"""``gradwire-probe``: one health check of a running server, for container healthchecks.

A container engine runs its healthcheck every few seconds for as long as the container lives,
so the probe imports grpc and grpc_health only (no NumPy, no SQLAlchemy, no SDK) and makes one
``grpc.health.v1.Health/Check`` call with a short deadline. It prints one line and exits 0 when
the answer is SERVING, 1 otherwise: NOT_SERVING (the database is away, or the server is
stopping), no answer within the deadline, or any other error.

The address is the argument, else ``GRADWIRE_PROBE_ADDRESS``, else loopback at the port of
``GRADWIRE_ADDRESS`` (the address the server in the same container listens on), else
127.0.0.1:50051.

The probe speaks as the server in its container listens: in plaintext, or over TLS when
``GRADWIRE_TLS_CERT_FILE`` is set there. It then trusts ``GRADWIRE_TLS_CA_FILE`` if set, else the
server's certificate file itself (a self-signed certificate, or one whose file holds its chain up
to the root); it shows ``GRADWIRE_CLIENT_CERT_FILE`` and ``GRADWIRE_CLIENT_KEY_FILE`` to a
mutual-TLS server; and since it dials loopback, ``GRADWIRE_PROBE_TLS_NAME`` names the host the
certificate was issued for when that is not the address dialled. Health needs no API key.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
WILDCARD_HOSTS = ("", "0.0.0.0", "[::]", "::")
"""Hosts a server listens on that a client cannot dial: the probe dials loopback instead."""


def probe_address(environ: Mapping[str, str]) -> str:
    """The address to check when none is given: ``GRADWIRE_PROBE_ADDRESS``, else the server's
    own ``GRADWIRE_ADDRESS`` (a wildcard host becomes 127.0.0.1), else :data:`DEFAULT_ADDRESS`."""
    if environ.get("GRADWIRE_PROBE_ADDRESS"):
        return environ["GRADWIRE_PROBE_ADDRESS"]
    listening = environ.get("GRADWIRE_ADDRESS", "")
    if ":" not in listening:
        return DEFAULT_ADDRESS
    host, port = listening.rsplit(":", 1)
    return f"{'127.0.0.1' if host in WILDCARD_HOSTS else host}:{port}"


TLS_FILES = {
    "root_certificates": ("GRADWIRE_TLS_CA_FILE", "GRADWIRE_TLS_CERT_FILE"),
    "certificate_chain": ("GRADWIRE_CLIENT_CERT_FILE",),
    "private_key": ("GRADWIRE_CLIENT_KEY_FILE",),
}
"""Each argument of grpc.ssl_channel_credentials, from the first of these variables that is set."""


def _read(environ: Mapping[str, str], names: Sequence[str]) -> bytes | None:
    path = next((environ[name] for name in names if environ.get(name)), None)
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def open_channel(address: str, environ: Mapping[str, str]) -> grpc.Channel:
    """A channel to ``address``: TLS when the server's environment has a certificate (see the
    module's docstring), else plaintext. OSError if a file named cannot be read."""
    if not environ.get("GRADWIRE_TLS_CERT_FILE"):
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(**{k: _read(environ, v) for k, v in TLS_FILES.items()})
    name = environ.get("GRADWIRE_PROBE_TLS_NAME")
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(address, credentials, options=options)


def check(
    address: str, service: str = "", timeout: float = 2.0, environ: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """Whether the server at ``address`` says SERVING for ``service`` ("": the whole server),
    and what it said (a status name, or the error's code and details) in a few words."""
    try:
        opened = open_channel(address, os.environ if environ is None else environ)
    except OSError as exc:
        return False, f"cannot read {exc.filename}: {exc.strerror}"
    with opened:
        stub = health_pb2_grpc.HealthStub(opened)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            details = " ".join(str(error.details() or "").split())
            return False, f"{error.code().name}: {details}" if details else error.code().name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return answer.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: Sequence[str] | None = None) -> int:
    """The ``gradwire-probe`` command: exit 0 if the server says SERVING, else 1."""
    parser = argparse.ArgumentParser(
        prog="gradwire-probe", description="Exit 0 if the gradwire server at ADDRESS says SERVING, else 1."
    )
    parser.add_argument("address", nargs="?", help="host:port (default: see the module's docstring)")
    parser.add_argument("--service", default="", help='the service name to check (default "": the server)')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    address = args.address or probe_address(os.environ)
    serving, said = check(address, args.service, args.timeout)
    print(f"gradwire-probe: {address} {said}", flush=True)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
