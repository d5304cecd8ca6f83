"""Where a client connects and how, decided once for both shells: the target, TLS, the token.

Part of the core under both SDKs: :mod:`.sdk` and :mod:`.aio` differ only in the channel they
open from a :class:`Connection` (``grpc`` or ``grpc.aio``); the target, the TLS credentials, the
rule that a token goes in plaintext to this machine only, and the metadata are decided here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
MiB = 1 << 20
TLS_VARIABLES = {
    "ca_file": "GRADWIRE_TLS_CA_FILE",
    "cert_file": "GRADWIRE_CLIENT_CERT_FILE",
    "key_file": "GRADWIRE_CLIENT_KEY_FILE",
}
"""The environment variables a client's TLS reads, by field (the server's own certificate is
GRADWIRE_TLS_CERT_FILE, hence other names here)."""
TOKEN_VARIABLE = "GRADWIRE_TOKEN"
INSECURE_VARIABLE = "GRADWIRE_INSECURE"
"""True (1, yes, on): a token may go in plaintext beyond this machine (a network you trust)."""
LOCAL_SCHEMES = ("unix:", "unix-abstract:")


@dataclass(frozen=True)
class TLS:
    """How a client's channel is secured: PEM files, read when the client is made.

    ``ca_file``: the root certificates that signed the server's (empty: gRPC's own roots, for a
    publicly signed server). ``cert_file`` and ``key_file``: the client's certificate and key,
    for a server that asks for one (mutual TLS); both or neither.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("TLS: give cert_file and key_file (a client certificate and its key) or neither")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TLS | None:
        """TLS from ``GRADWIRE_TLS_CA_FILE``, ``GRADWIRE_CLIENT_CERT_FILE`` and
        ``GRADWIRE_CLIENT_KEY_FILE``; None (plaintext) when none of them is set."""
        env = os.environ if env is None else env
        given = {name: env.get(variable, "") for name, variable in TLS_VARIABLES.items()}
        return cls(**given) if any(given.values()) else None

    def credentials(self) -> grpc.ChannelCredentials:
        pem = {name: read_pem(name, getattr(self, name)) for name in TLS_VARIABLES}
        return grpc.ssl_channel_credentials(
            root_certificates=pem["ca_file"], private_key=pem["key_file"], certificate_chain=pem["cert_file"]
        )


def read_pem(name: str, path: str) -> bytes | None:
    """The file's bytes (None for no file), or a ValueError naming it: a bad path is the caller's."""
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ValueError(f"TLS {name} {path}: cannot read it: {exc.strerror or exc}") from exc


def loopback(target: str) -> bool:
    """Whether every address of ``target`` (``host:port``, ``[::1]:port``, ``unix:path``, or
    several: ``ipv4:127.0.0.1:1,127.0.0.1:2``) stays on this machine."""
    if target.startswith(LOCAL_SCHEMES):
        return True
    addresses = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").split(",")
    return all(loopback_host(address.rsplit(":", 1)[0].strip("[]")) for address in addresses)


def loopback_host(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


BALANCED = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""The channel's service config: calls go round the addresses the target resolves to (a DNS name's
records, or the addresses given), each a replica of one service, skipping those that are down."""


def grpc_target(address: str | Sequence[str]) -> str:
    """The gRPC target of one server address or several replicas' (a list, or one string of
    comma-separated ``host:port``): one is used as it is (a DNS name is resolved, and re-resolved,
    by gRPC, and calls are balanced over its records); several become one ``ipv4:``/``ipv6:``
    target, each host name resolved once, now."""
    given = address.split(",") if isinstance(address, str) else list(address)
    addresses = [a.strip() for a in given if a.strip()]
    if len(addresses) <= 1:
        return addresses[0] if addresses else DEFAULT_ADDRESS
    hosts = [resolve(a) for a in addresses]
    families = {":" in host for host, _ in hosts}
    if len(families) > 1:
        raise ValueError(f"the addresses {addresses} mix IPv4 and IPv6: give one kind")
    if families == {True}:
        return "ipv6:" + ",".join(f"[{host}]:{port}" for host, port in hosts)
    return "ipv4:" + ",".join(f"{host}:{port}" for host, port in hosts)


def server_name(address: str | Sequence[str], tls: TLS | None) -> list[tuple[str, int | str]]:
    """Over TLS, replicas given by name are checked against that name, not the addresses it
    resolved to; so several addresses must be one name (``a.example:1,a.example:2``)."""
    given = [a.strip() for a in (address.split(",") if isinstance(address, str) else address) if a.strip()]
    if tls is None or len(given) <= 1:
        return []
    hosts = {a.rpartition(":")[0].strip("[]") for a in given}
    if len(hosts) != 1:
        raise ValueError(
            f"over TLS, replicas are one host name with a certificate for it, not {sorted(hosts)}"
        )
    return [("grpc.ssl_target_name_override", hosts.pop())]


def resolve(address: str) -> tuple[str, str]:
    """``host:port`` as an IP address and the port (IPv4 first where the name has both)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return str(socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)[0][4][0]), port
        except socket.gaierror:
            continue
    raise ValueError(f"{address!r}: the host name {host!r} resolves to no address")


@dataclass(frozen=True)
class Connection:
    """Where a client connects and how: its arguments, the environment filling those not given."""

    address: str
    tls: TLS | None
    token: str
    insecure: bool
    options: list[tuple[str, int | str]]

    @classmethod
    def of(
        cls,
        address: str | Sequence[str] | None,
        tls: TLS | None,
        token: str | None,
        insecure: bool | None,
        max_message_mb: int,
    ) -> Connection:
        if insecure is None:
            insecure = os.environ.get(INSECURE_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")
        given = address or os.environ.get("GRADWIRE_SERVER", DEFAULT_ADDRESS)
        tls = tls or TLS.from_env()
        return cls(
            grpc_target(given),
            tls,
            os.environ.get(TOKEN_VARIABLE, "") if token is None else token,
            insecure,
            [
                ("grpc.max_send_message_length", max_message_mb * MiB),
                ("grpc.max_receive_message_length", max_message_mb * MiB),
                ("grpc.service_config", BALANCED),
                *server_name(given, tls),
            ],
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """A secure channel's credentials: the TLS files', and the token as call credentials."""
        if self.tls is None:
            raise ValueError("a plaintext connection has no channel credentials")
        credentials = self.tls.credentials()
        if not self.token:
            return credentials
        return grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(self.token))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What a plaintext channel adds to every call (gRPC refuses call credentials there): the
        token, to a loopback address only unless ``insecure``, for anywhere else it would travel
        readable; a ValueError saying so otherwise."""
        if not self.token:
            return ()
        if not self.insecure and not loopback(self.address):
            raise ValueError(
                f"a token goes over TLS only (or in plaintext to this machine), and {self.address} is "
                f"neither: give tls (or {TLS_VARIABLES['ca_file']}), or insecure=True "
                f"({INSECURE_VARIABLE}=true) on a network you trust"
            )
        return (("authorization", f"Bearer {self.token}"),)
