"""Transport security of the server's listener, from three settings.

``tls_cert_file`` and ``tls_key_file`` (PEM) make it TLS; ``tls_client_ca_file`` besides makes it
mutual TLS: a client must present a certificate that CA signed, or its handshake fails. None of
them: plaintext, as before.

The files are read and checked once, at startup, with the standard library's ``ssl`` (a key that
does not match its certificate, or a file that is not PEM, is refused there), because gRPC itself
accepts them silently and then fails every handshake, saying why on stderr only. Every refusal is
a :class:`.errors.StartupError` naming the setting and the file.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from ..core.errors import StartupError
from ..core.settings import Settings, variable

PLAINTEXT, TLS, MUTUAL_TLS = "plaintext", "TLS", "mutual TLS"
FILES = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
NEEDS = {
    "tls_cert_file": ("tls_key_file",),
    "tls_key_file": ("tls_cert_file",),
    "tls_client_ca_file": ("tls_cert_file", "tls_key_file"),
}
"""The settings each TLS setting is useless without: a certificate is served with its key, and
mutual TLS is TLS first."""


def _named(name: str) -> str:
    """A setting as the operator sets it (``tls_key_file``: ``--tls-key-file``/GRADWIRE_TLS_KEY_FILE)."""
    return f"--{name.replace('_', '-')} ({variable(name)})"


def transport(settings: Settings) -> str:
    """What the listener speaks: plaintext, TLS, or mutual TLS (for the startup line)."""
    if not settings.tls_cert_file:
        return PLAINTEXT
    return MUTUAL_TLS if settings.tls_client_ca_file else TLS


def _check_given(settings: Settings) -> None:
    for name, needed in NEEDS.items():
        missing = [other for other in needed if getattr(settings, name) and not getattr(settings, other)]
        if missing:
            raise StartupError(f"{_named(name)} is set but {_named(missing[0])} is not: give both")


def _read(settings: Settings, name: str) -> bytes:
    path = getattr(settings, name)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{_named(name)}: cannot read {path}: {exc.strerror or exc}") from None


def _check_pem(settings: Settings) -> None:
    """Load the files as a TLS server would, so that gRPC is given only what it can use."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password of b"" refuses an encrypted key at once, instead of asking on the terminal.
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file, password=b"")
    except (ssl.SSLError, ValueError) as exc:
        raise StartupError(
            f"{_named('tls_cert_file')} {settings.tls_cert_file} and {_named('tls_key_file')} "
            f"{settings.tls_key_file} are not a PEM certificate and its unencrypted key: {exc}"
        ) from None
    if settings.tls_client_ca_file:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise StartupError(
                f"{_named('tls_client_ca_file')} {settings.tls_client_ca_file} holds no PEM "
                f"certificate: {exc}"
            ) from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The listener's credentials: TLS, mutual TLS, or None for plaintext.
    Raises :class:`StartupError` for files missing, unreadable, or not a certificate and its key."""
    _check_given(settings)
    if transport(settings) == PLAINTEXT:
        return None
    contents = {name: _read(settings, name) for name in FILES if getattr(settings, name)}
    _check_pem(settings)
    client_ca = contents.get("tls_client_ca_file")
    return grpc.ssl_server_credentials(
        [(contents["tls_key_file"], contents["tls_cert_file"])],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
