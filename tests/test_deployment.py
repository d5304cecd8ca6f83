"""The container files, proved without a container engine.

- ``docker-compose.yml`` validates against the Compose specification's JSON schema (the copy
  check-jsonschema ships), and copies of it broken on purpose do not.
- The Dockerfile and ``.dockerignore`` say what the deployment promises: a numeric non-root
  user, a volume for the SQLite data, an exec-form healthcheck running ``gradwire-probe``, the
  entrypoint that sets the BLAS threads, a build context of the sources only.
- The compose topology runs here as it would in containers: the ``migrate`` service's command
  and then the ``gradwire`` service's command, each through the image's entrypoint with the
  image's environment and the service's own, against a fresh database on the test PostgreSQL
  server. Only what names the containers' network is replaced: the database's host, port, user
  and name, and the listening addresses (loopback, free ports). The first API key is made as
  README.md's Deployment section tells the operator (``docker compose run --rm -T migrate
  gradwire keys create ...``: that command's gradwire part, through the entrypoint, in the
  ``migrate`` service's environment). The healthcheck command then says SERVING without a key,
  the metrics port answers, a client with the key creates, trains and predicts through it, one
  without a key (or with a wrong one) is refused UNAUTHENTICATED, and once the README's revoke
  command has run, the key is refused within ``GRADWIRE_AUTH_CACHE_SECONDS``.
- The ``gradwire`` service listens on every interface in plaintext: authentication stays on,
  and the server starts there only because the compose file says ``GRADWIRE_INSECURE``, the one
  thing it would otherwise refuse for (TLS missing, not authentication).
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import POSTGRES_SKIP, POSTGRES_URL
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from ruamel.yaml import YAML
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from gradwire.client import Client
from gradwire.client.errors import UnauthenticatedError
from gradwire.service.core.settings import Settings
from gradwire.storage.database import normalise_url

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
"""Where pip put ``gradwire`` and ``gradwire-probe``: the image's /usr/local/bin."""
SPEC: dict[str, Any] = {
    "input_dim": 2,
    "layers": [
        {"kind": "dense", "units": 8, "activation": "tanh", "init": "xavier_uniform"},
        {"kind": "dense", "units": 1, "activation": "sigmoid", "init": "xavier_uniform"},
    ],
    "loss": "binary_crossentropy",
    "dtype": "float32",
    "seed": 4,
}
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
Y = np.array([[0], [1], [1], [0]], dtype=np.float32)


def load_compose() -> dict[str, Any]:
    """The compose file as data, its YAML merge keys (``<<: *gradwire``) applied."""
    return YAML(typ="safe").load(COMPOSE.read_text())


IN_A_SERVICE = re.compile(r"docker compose run --rm -T (?P<service>[\w-]+) (?P<command>gradwire [^)\n#]*)")


def operator_commands() -> dict[str, tuple[str, list[str]]]:
    """The gradwire commands README.md's Deployment section runs in a compose service
    (``docker compose run --rm -T SERVICE gradwire ...``), the first of each kind, by their two
    words after ``gradwire`` (``"keys create"``): the service, and the command's words."""
    section = README.read_text().partition("\n## Deployment\n")[2].partition("\n## ")[0]
    found: dict[str, tuple[str, list[str]]] = {}
    for match in IN_A_SERVICE.finditer(section):
        words = shlex.split(match["command"])
        found.setdefault(" ".join(words[1:3]), (match["service"], words))
    return found


VARIABLE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<name>\w+)(?:(?P<op>:?[?-])(?P<arg>[^}]*))?\})")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with compose's interpolation applied to every string in it: ``$$`` is ``$``,
    ``${V:-default}``, ``${V-default}``, ``${V:?message}`` and ``${V?message}`` (a KeyError
    with the message when V is unset, or empty for ``:?``)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        given, op, arg = env.get(match["name"]), match["op"] or "", match["arg"] or ""
        missing = given is None or (op.startswith(":") and not given)
        if missing and op.endswith("?"):
            raise KeyError(arg)
        return arg if missing and op.endswith("-") else given or ""

    return VARIABLE.sub(one, value)


def dockerfile_stage() -> list[tuple[str, str]]:
    """The final stage of the Dockerfile as (INSTRUCTION, arguments), continued lines joined."""
    lines = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text()).splitlines()
    steps = [
        line.strip().split(None, 1) for line in lines if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = [(step[0].upper(), step[1] if len(step) > 1 else "") for step in steps]
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def arguments(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [args for word, args in stage if word == instruction]


def image_environment(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV the final stage sets (``ENV A=1 B=2`` form)."""
    pairs = [word.split("=", 1) for args in arguments(stage, "ENV") for word in shlex.split(args)]
    return dict(pairs)


# ------------------------------------------------------------------------- the compose schema


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_compose_file_follows_the_compose_specification() -> None:
    done = check_compose(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


BROKEN = {
    "an unknown dependency condition": (
        "condition: service_completed_successfully",
        "condition: service_done",
    ),
    "a misspelt healthcheck option": ("start_period: 30s", "start_periods: 30s"),
    "a resource limit the spec does not know": ("memory: 4g", "memroy: 4g"),
}


@pytest.mark.parametrize("change", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_compose_file_is_refused(change: tuple[str, str], tmp_path: Path) -> None:
    """The negative control: the schema is really applied, down to the keys the file uses."""
    old, new = change
    assert old in COMPOSE.read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace(old, new))
    done = check_compose(broken)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Schema validation errors" in done.stdout + done.stderr


def test_the_topology_waits_on_health_and_migrations() -> None:
    services = load_compose()["services"]
    app, migrate, postgres = services["gradwire"], services["migrate"], services["postgres"]
    assert app["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["command"] == ["gradwire", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "--host=127.0.0.1" in postgres["healthcheck"]["test"]  # not the init server's socket
    assert app["healthcheck"]["test"] == ["CMD", "gradwire-probe"]
    assert any(volume.startswith("pgdata:") for volume in postgres["volumes"])
    assert "pgdata" in load_compose()["volumes"]
    for service in services.values():
        assert set(service["deploy"]["resources"]["limits"]) >= {"cpus", "memory"}


def test_no_secret_is_written_in_the_compose_file() -> None:
    """Every password comes from the environment, and nothing starts without it."""
    services = load_compose()["services"]
    secret_values = [
        value
        for service in services.values()
        for name, value in service.get("environment", {}).items()
        if "PASSWORD" in name
    ]
    # postgres's own, and PGPASSWORD of the services of the gradwire image (the Ray nodes train:
    # their actors reach the database as the server does)
    assert len(secret_values) == 1 + len(
        [s for s in services.values() if s.get("image", "").startswith("gradwire")]
    )
    for value in secret_values:
        assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", value), value
    assert "@postgres" in services["gradwire"]["environment"]["GRADWIRE_DATABASE_URL"]
    assert make_url(services["gradwire"]["environment"]["GRADWIRE_DATABASE_URL"]).password is None
    with pytest.raises(KeyError, match="set POSTGRES_PASSWORD"):
        interpolate(load_compose(), {})
    with pytest.raises(KeyError, match="set POSTGRES_PASSWORD"):
        interpolate(load_compose(), {"POSTGRES_PASSWORD": ""})


def test_the_ray_profile_is_opt_in_and_its_nodes_run_the_servers_image() -> None:
    """``docker compose up`` starts no Ray; ``--profile ray`` adds a head and a worker of the same
    image (Ray needs the same Python and gradwire on every node), whose locks the image can take."""
    services = interpolate(load_compose(), {"POSTGRES_PASSWORD": "x"})["services"]
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"ray-head", "ray-worker"}
    for name in profiled:
        assert services[name]["profiles"] == ["ray"]
        assert services[name]["image"] == services["gradwire"]["image"]
        assert services[name]["command"][:2] == ["ray", "start"]
    assert "--head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert services["gradwire"]["environment"]["GRADWIRE_EXECUTOR"] == "process"
    copied = set(re.findall(r"requirements/(\w+)\.txt", (ROOT / "Dockerfile").read_text()))
    assert set(services["gradwire"]["build"]["args"]["LOCKS"].split()) <= copied
    assert {"server", "otel", "ray"} <= copied


def test_the_readme_manages_keys_and_tenants_in_the_migrate_service() -> None:
    """``docker compose run --rm -T migrate gradwire ...``: that service has the database's URL
    and password and needs no server running; ``-T`` (no terminal) keeps stdout the key's alone."""
    commands = operator_commands()
    assert set(commands) >= {"keys create", "keys list", "keys revoke", "tenants show", "tenants quota"}
    assert {service for service, _ in commands.values()} == {"migrate"}
    assert "GRADWIRE_DATABASE_URL" in load_compose()["services"]["migrate"]["environment"]


def test_the_server_keeps_authentication_on_and_is_insecure_only_for_plaintext(tmp_path: Path) -> None:
    """No service turns authentication off; the server, on every interface without TLS, says
    ``GRADWIRE_INSECURE``, and without that line refuses to start, for TLS alone."""
    services = interpolate(load_compose(), {"POSTGRES_PASSWORD": "unused"})["services"]
    for service in services.values():
        assert service.get("environment", {}).get("GRADWIRE_AUTH", "true") == "true"
    app = services["gradwire"]["environment"]
    assert app["GRADWIRE_ADDRESS"].startswith("0.0.0.0:")
    assert app.get("GRADWIRE_INSECURE") == ("true" if not app.get("GRADWIRE_TLS_CERT_FILE") else None)
    assert "GRADWIRE_INSECURE" not in services["migrate"]["environment"]

    # Nothing listens at this database: a server that did not refuse would stop there.
    topology = Topology(make_url("postgresql://gradwire@127.0.0.1:1/gradwire"), tmp_path)
    env = topology.service_env("gradwire")
    del env["GRADWIRE_INSECURE"]
    env["GRADWIRE_ADDRESS"] = address = f"0.0.0.0:{topology.grpc_port}"
    done = subprocess.run(
        topology.command("gradwire"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"gradwire: refusing to listen on {address} without TLS: ")
    assert done.stderr.count("\n") == 1


# ------------------------------------------------------------------ the Dockerfile, the context


def test_the_image_runs_as_a_numeric_user_with_a_data_volume() -> None:
    stage = dockerfile_stage()
    (user,) = arguments(stage, "USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user} is not numeric"
    assert int(user.split(":")[0]) != 0
    volumes = [v for args in arguments(stage, "VOLUME") for v in args.split()]
    assert volumes == ["/data"]
    assert image_environment(stage)["GRADWIRE_DATA_DIR"] == "/data"
    assert image_environment(stage)["GRADWIRE_ADDRESS"] == "0.0.0.0:50051"
    assert image_environment(stage)["GRADWIRE_HTTP_ADDRESS"] == "0.0.0.0:8080"


def test_the_image_checks_its_health_with_gradwire_probe_in_exec_form() -> None:
    stage = dockerfile_stage()
    (healthcheck,) = arguments(stage, "HEALTHCHECK")
    options, _, command = healthcheck.partition(" CMD ")
    assert json.loads(command) == ["gradwire-probe"]  # exec form: JSON, no shell
    assert "--interval=" in options
    assert "--timeout=" in options
    # The compose healthcheck runs the same command; the ports it publishes are the image's.
    app = load_compose()["services"]["gradwire"]
    assert app["healthcheck"]["test"][1:] == json.loads(command)
    exposed = {port for args in arguments(stage, "EXPOSE") for port in args.split()}
    published = {mapping.rsplit(":", 1)[1] for mapping in app["ports"]}
    assert published == exposed == {"50051", "8080", "9464"}
    listening = {
        app["environment"][name].rsplit(":", 1)[1]
        for name in ("GRADWIRE_ADDRESS", "GRADWIRE_HTTP_ADDRESS", "GRADWIRE_METRICS_ADDRESS")
    }
    assert listening == exposed


def test_the_probe_is_a_console_script_that_imports_grpc_only() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gradwire-probe"] == "gradwire.service.ops.probe:main"
    tree = ast.parse((ROOT / "service" / "ops" / "probe.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside == {"grpc", "grpc_health.v1"}


def probe(*argv: str, **env: str) -> tuple[int, str]:
    """``gradwire-probe`` as a child process: its exit status and its one line."""
    done = subprocess.run(
        [str(BIN / "gradwire-probe"), *argv],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout


def test_the_probe_says_serving_with_0_and_anything_else_with_1() -> None:
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        here = f"127.0.0.1:{port}"
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert probe(here) == (0, f"gradwire-probe: {here} SERVING\n")
        assert probe(GRADWIRE_PROBE_ADDRESS=here, GRADWIRE_ADDRESS="0.0.0.0:1") == (
            0,
            f"gradwire-probe: {here} SERVING\n",
        )
        assert probe(GRADWIRE_ADDRESS=f"0.0.0.0:{port}") == (0, f"gradwire-probe: {here} SERVING\n")
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe(here) == (1, f"gradwire-probe: {here} NOT_SERVING\n")
        assert probe(here, "--service", "gradwire.v1.Trainer") == (
            1,
            f"gradwire-probe: {here} NOT_FOUND\n",
        )
    finally:
        server.stop(None)
    code, line = probe(here)
    assert code == 1
    assert line.startswith(f"gradwire-probe: {here} UNAVAILABLE")
    assert line.count("\n") == 1


def test_the_installed_probe_leaves_numpy_and_sqlalchemy_unimported() -> None:
    heavy = (
        "import sys, gradwire.service.ops.probe; "
        "print([m for m in ('numpy', 'sqlalchemy') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", heavy], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_the_build_context_is_the_sources_the_dockerfile_copies() -> None:
    """``.dockerignore`` leaves out everything (``*``), then lets in exactly what the
    Dockerfile copies: .git, .venv, data/ and .env never reach the build."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    let_in = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    copies = [args.split() for args in re.findall(r"^COPY\s+(.*)$", (ROOT / "Dockerfile").read_text(), re.M)]
    copied = {source for words in copies if not words[0].startswith("--from") for source in words[:-1]}
    assert let_in == copied
    assert not {".git", ".venv", "data", ".env"} & {path.split("/")[0] for path in let_in}
    assert all("*" not in path and "?" not in path for path in let_in)  # nothing let in by a wildcard


# ------------------------------------------------------------------------------ the entrypoint

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def threads_under(cgroup: Path, **env: str) -> tuple[str, str]:
    """OPENBLAS_NUM_THREADS and OMP_NUM_THREADS as the entrypoint sets them for its command."""
    command = ["sh", str(ENTRYPOINT), "sh", "-c", 'echo "$OPENBLAS_NUM_THREADS $OMP_NUM_THREADS"']
    environ = {"PATH": os.environ["PATH"], "CGROUP_ROOT": str(cgroup), **env}
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=30, check=True)
    assert done.stderr == ""
    blas, omp = done.stdout.split()
    return blas, omp


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: one thread
        ({"cpu.max": "100000 100000"}, 1),  # a last line without its newline
        ({"cpu.max": "150000 100000\n"}, 2),  # one and a half: rounded up
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({}, None),  # no cgroup files at all
    ],
)
def test_the_entrypoint_sets_blas_threads_from_the_cpu_quota(
    files: dict[str, str], limit: int | None, tmp_path: Path
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    usable = len(os.sched_getaffinity(0))
    expected = str(min(usable, limit) if limit else usable)
    assert threads_under(tmp_path) == (expected, expected)


def test_the_entrypoint_leaves_threads_the_operator_set(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert threads_under(tmp_path, OPENBLAS_NUM_THREADS="3") == ("3", "1")
    assert threads_under(tmp_path, OMP_NUM_THREADS="5") == ("1", "5")
    (tmp_path / "cpu.max").write_text("max 100000\n")  # and the operator's OpenMP count is not the CPUs'
    usable = str(len(os.sched_getaffinity(0)))
    assert threads_under(tmp_path, OMP_NUM_THREADS="64") == (usable, "64")


def test_the_entrypoint_passes_the_commands_exit_status_on() -> None:
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", "exit 7"], env={"PATH": os.environ["PATH"]}, timeout=30
    )
    assert done.returncode == 7


# -------------------------------------------------------------- the topology, without Docker


@pytest.fixture
def database() -> Iterator[URL]:
    """A fresh database of the test's own on the test PostgreSQL server (dropped after)."""
    if not POSTGRES_URL:
        pytest.skip(POSTGRES_SKIP)
    name = f"gradwire_deploy_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(POSTGRES_URL).set(database=name)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (bound to port 0 together, so all differ, then let go)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def on_loopback(address: str, port: int) -> str:
    """A container's listening address (``0.0.0.0:50051``) as this machine's (loopback, a free port)."""
    host, _ = address.rsplit(":", 1)
    assert host == "0.0.0.0", f"the container listens on {address}, not on every interface"
    return f"127.0.0.1:{port}"


class Topology:
    """The compose file's services as this machine runs them: each one's command through the
    image's entrypoint, in the image's environment plus the service's own (interpolated), with
    the network's names replaced by this machine's (see the module's docstring)."""

    def __init__(self, database: URL, home: Path) -> None:
        self.password = secrets.token_hex(16)
        self.compose = interpolate(load_compose(), {"POSTGRES_PASSWORD": self.password})
        stage = dockerfile_stage()
        (entrypoint,) = (json.loads(args) for args in arguments(stage, "ENTRYPOINT"))
        copies = [args.split() for args in arguments(stage, "COPY") if not args.startswith("--")]
        source = next(words[0] for words in copies if Path(words[-1]).name == entrypoint[0])
        self.entrypoint = ["sh", str(ROOT / source), *entrypoint[1:]]
        self.image_env = image_environment(stage)
        self.database, self.home = database, home
        self.grpc_port, self.metrics_port = free_ports(2)

    def service_env(self, name: str) -> dict[str, str]:
        postgres = self.compose["services"]["postgres"]["environment"]
        env = {**self.image_env, **self.compose["services"][name]["environment"]}
        url = make_url(env["GRADWIRE_DATABASE_URL"])
        assert (url.host, url.port) == ("postgres", 5432), "the database is the postgres service"
        assert (url.username, url.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
        assert env["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"] == self.password
        here = url.set(
            host=self.database.host,
            port=self.database.port,
            username=self.database.username,
            database=self.database.database,
        )
        env["GRADWIRE_DATABASE_URL"] = here.render_as_string(hide_password=False)
        env["PGPASSWORD"] = self.database.password or self.password  # trust auth ignores it
        if "GRADWIRE_ADDRESS" in env:
            env["GRADWIRE_ADDRESS"] = on_loopback(env["GRADWIRE_ADDRESS"], self.grpc_port)
        if "GRADWIRE_METRICS_ADDRESS" in env:
            env["GRADWIRE_METRICS_ADDRESS"] = on_loopback(env["GRADWIRE_METRICS_ADDRESS"], self.metrics_port)
        env["GRADWIRE_DATA_DIR"] = str(self.home / "data")  # the image's VOLUME /data
        return {**env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(self.home)}

    def command(self, name: str) -> list[str]:
        return [*self.entrypoint, *self.compose["services"][name]["command"]]

    def run(self, name: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """``docker compose run --rm -T NAME [COMMAND]``: the service's command, or ``command``,
        through the entrypoint in the service's environment, to its end."""
        argv = [*self.entrypoint, *command] if command else self.command(name)
        env = self.service_env(name)
        return subprocess.run(argv, env=env, cwd=self.home, capture_output=True, text=True, timeout=120)


class Started:
    """A service's command as a child process; its stderr (JSON log lines) read as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        self.log.extend(self.process.stderr)

    def first_line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline()  # blocks until the server has bound its port


def refused_within(seconds: float, call: Callable[[], object]) -> float:
    """How long ``call`` went on working before it raised UnauthenticatedError; AssertionError if
    it still worked when sent ``seconds`` after this began."""
    began = time.monotonic()
    while True:
        sent = time.monotonic() - began
        try:
            call()
        except UnauthenticatedError:
            return sent
        assert sent <= seconds, f"still let in {sent:.1f} s after its key was revoked"
        time.sleep(0.1)


def test_the_compose_topology_serves_a_client_on_postgresql(database: URL, tmp_path: Path) -> None:
    topology = Topology(database, tmp_path)

    migrate = topology.run("migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert "at the current schema" in migrate.stdout

    # The first key, as README.md's Deployment section makes it: KEY=$(docker compose run ...).
    operator = operator_commands()
    service, create = operator["keys create"]
    made = topology.run(service, create)
    assert made.returncode == 0, made.stderr
    key = made.stdout.removesuffix("\n")
    shape = re.fullmatch(r"gw_([0-9a-f]{12})_[\w-]{43}", key)
    assert shape, f"stdout is not one key alone: {made.stdout!r}"
    key_id, tenant = shape.group(1), create[create.index("--tenant") + 1]
    assert key_id in made.stderr
    assert key not in made.stderr

    env = topology.service_env("gradwire")
    health = topology.compose["services"]["gradwire"]["healthcheck"]["test"]
    assert health[0] == "CMD"
    server = Started(topology.command("gradwire"), env, tmp_path)
    address = f"127.0.0.1:{topology.grpc_port}"
    try:
        line = server.first_line()
        assert f"listening on {address}" in line, (line, server.log[-5:])
        started = Path(f"/proc/{server.process.pid}/environ")
        if started.exists():  # the entrypoint exec'd the server, with the BLAS threads set
            environ = dict(item.split("=", 1) for item in started.read_text().split("\0") if "=" in item)
            assert 1 <= int(environ["OPENBLAS_NUM_THREADS"]) <= len(os.sched_getaffinity(0))
            assert "serve" in Path(f"/proc/{server.process.pid}/cmdline").read_text().split("\0")

        assert "GRADWIRE_TOKEN" not in env  # the healthcheck sends no key, and needs none
        probe = subprocess.run(health[1:], env=env, capture_output=True, text=True, timeout=60)
        assert (probe.returncode, probe.stdout) == (0, f"gradwire-probe: {address} SERVING\n")

        with urllib.request.urlopen(
            f"http://127.0.0.1:{topology.metrics_port}/metrics", timeout=30
        ) as answer:
            assert answer.status == 200
            assert "# TYPE" in answer.read().decode()

        for token in ("", f"gw_{key_id}_{'A' * 43}"):  # no key; a key's id with a wrong secret
            with Client(address, token=token) as stranger, pytest.raises(UnauthenticatedError):
                stranger.create_model(SPEC, name="stranger")

        with Client(address, token=key) as client:
            model = client.create_model(SPEC, name="deployed")
            history = model.fit(X, Y, epochs=5, batch_size=4, optimizer="adam", learning_rate=0.05)
            assert len(history.history["loss"]) == 5
            assert client.model(model.id).info.version == 2
            predictions = model.predict(X)
            assert predictions.shape == (4, 1)
            assert np.all((predictions > 0) & (predictions < 1))

            # The client commands take the key from GRADWIRE_TOKEN; the model is the tenant's.
            listed = subprocess.run(
                [str(BIN / "gradwire"), "models", "list"],
                env={
                    "PATH": env["PATH"],
                    "HOME": str(tmp_path),
                    "GRADWIRE_SERVER": address,
                    "GRADWIRE_TOKEN": key,
                },
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert listed.returncode == 0, listed.stderr
            assert model.id in listed.stdout
            service, show = operator["tenants show"]
            shown = topology.run(service, show)
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["usage"]["max_models"] == 1

            service, revoke = operator["keys revoke"]
            revoked = topology.run(service, [key_id if word == "KEY_ID" else word for word in revoke])
            assert revoked.returncode == 0, revoked.stderr
            bound = float(env.get("GRADWIRE_AUTH_CACHE_SECONDS", Settings.auth_cache_seconds))
            refused_within(bound + 1.0, lambda: client.model(model.id))
        with Client(address, token=key) as again, pytest.raises(UnauthenticatedError):
            again.model(model.id)
        service, listing = operator["keys list"]
        keys = topology.run(service, listing)
        assert keys.returncode == 0, keys.stderr
        assert re.search(rf"^{key_id}\s+{tenant}\s+revoked", keys.stdout, re.M), keys.stdout

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log[-5:]
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)

    server.reader.join(timeout=30)
    records = [json.loads(line) for line in server.log if line.startswith("{")]  # gRPC's own lines aside
    (began,) = (record for record in records if record["message"] == "server started")
    assert began["auth"] is True

    gone = subprocess.run(health[1:], env=env, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1
    assert gone.stdout.startswith(f"gradwire-probe: {address} UNAVAILABLE")
