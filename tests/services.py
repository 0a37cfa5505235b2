"""Services for end-to-end tests, started the way a team would start them, each on 127.0.0.1 and a free port:
PostgreSQL (`initdb` + `postgres`), an S3 endpoint (`moto_server`) and `mlflow server` on top of both.

    with postgres(tmp_path) as pg, s3(tmp_path) as store:
        store.create_bucket("team")
        with mlflow_server(tmp_path, pg.url, "s3://team/mlflow", env=store.env) as url:
            ...                                  # clients need only MLFLOW_TRACKING_URI=url

Each is a context manager: it yields where to reach the service and stops the service's whole process group
on exit, also when the test failed. Logs go to files in the given folder (`<name>.log`). A service that
cannot start on this machine (no PostgreSQL binaries, no `postgres` user, no moto) skips the test with the
reason, except under CI (CI=true), where that is a failure: CI installs them (.ci/run).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import pytest

BIN = Path(sys.executable).parent
# A direct opener: a proxy from the environment must not see loopback requests.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MLFLOW_START_S = 180  # ~25 s on 2 idle cores; more with a fresh PostgreSQL schema and a busy machine


def unavailable(reason: str) -> NoReturn:
    """Skip: this machine cannot run the service. Under CI that is a set-up bug, so fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def start(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """A server in its own session (process group), stdout and stderr into `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        time.sleep(0.2 if sig == signal.SIGTERM else 0)
    proc.poll()


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    """Poll `ready` until it is true; fail (with the log's end) when the server exits or the time is up."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.5)


def http_ok(url: str) -> bool:
    try:
        with HTTP.open(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- PostgreSQL -------------------------------------------------------------------------------------------

@dataclass
class Postgres:
    port: int
    user: str
    password: str
    database: str

    @property
    def url(self) -> str:
        """The SQLAlchemy URL MLflow takes as --backend-store-uri. The driver is named: SQLAlchemy 2.1 reads a
        bare postgresql:// as psycopg 3, and rnnlab[scale] installs psycopg2."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def connect(self):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname=self.database)


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    initdb = Path(found[-1]) if found else (Path(shutil.which("initdb")) if shutil.which("initdb") else None)
    if initdb is None:
        unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install -y postgresql")
    return initdb.parent


def as_postgres() -> tuple[list[str], pwd.struct_passwd]:
    """Who runs PostgreSQL's programs: `initdb` and `postgres` refuse to run as root, so root runs them as
    the `postgres` user (Debian's package creates it). Returns the command prefix and the user."""
    if os.geteuid() != 0:
        return [], pwd.getpwuid(os.geteuid())
    try:
        return ["runuser", "-u", "postgres", "--"], pwd.getpwnam("postgres")
    except KeyError:
        unavailable("running as root, and no `postgres` user to run PostgreSQL as (apt-get install -y postgresql)")


@contextlib.contextmanager
def postgres(logs: Path, user: str = "rnnlab", password: str = "rnnlab-pw",
             database: str = "mlflow", more: tuple[str, ...] = ()) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with `database` owned by `user` (password login over TCP).

    The cluster lives in a folder of its own under the system temp dir, owned by the user PostgreSQL runs as
    (pytest's tmp_path is private to root); its Unix socket too. Durability is off: it is thrown away.
    `more`: further databases owned by `user` (e.g. an Optuna study's, beside MLflow's)."""
    bindir, (prefix, owner) = postgres_bin(), as_postgres()
    home = Path(tempfile.mkdtemp(prefix="rnnlab-pg-"))
    superuser = owner.pw_name  # PostgreSQL's superuser is named after the system user that runs initdb
    port, log = free_port(), logs / "postgres.log"

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([*prefix, *args], cwd=home, capture_output=True, text=True)
        with open(log, "a") as out:
            out.write(f"$ {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    server = None
    try:
        (home / "pw").write_text("superuser-pw\n")  # initdb wants one as soon as any login takes a password
        for path in (home, home / "pw"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            pg(str(bindir / "initdb"), "-D", str(home / "data"), "-U", superuser, f"--pwfile={home / 'pw'}",
               "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
            server = start([*prefix, str(bindir / "postgres"), "-D", str(home / "data"), "-h", "127.0.0.1",
                            "-p", str(port), "-k", str(home), "-c", "fsync=off", "-c", "synchronous_commit=off",
                            "-c", "full_page_writes=off"], log, cwd=home)
            ready = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
            wait_until(lambda: subprocess.run(ready).returncode == 0, server, log, "postgres", 60)
        except RuntimeError as err:
            unavailable(f"PostgreSQL does not start on this machine: {err}")
        pg(str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(home), "-p", str(port),
           "-U", superuser, "-d", "postgres",
           "-c", f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
           *[arg for db in (database, *more) for arg in ("-c", f"CREATE DATABASE {db} OWNER {user}")])
        yield Postgres(port, user, password, database)
    finally:
        if server is not None:
            pg(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m", "fast", "-w", "-t", "30", "stop", check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=30)
            stop(server)  # a no-op after a clean stop
        shutil.rmtree(home, ignore_errors=True)


# --- S3 (moto) --------------------------------------------------------------------------------------------

@dataclass
class S3:
    endpoint: str
    key: str = "testing-key"
    secret: str = "testing-secret"
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        """What a process that talks to this S3 directly needs (mlflow server, dvc)."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": self.region, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name=self.region)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@contextlib.contextmanager
def s3(logs: Path) -> Iterator[S3]:
    """moto's S3 server (an in-memory S3 HTTP API) on 127.0.0.1."""
    moto = BIN / "moto_server"
    if not moto.exists():
        unavailable(f"{moto} is missing: pip install 'moto[server]' (in rnnlab[dev])")
    port, log = free_port(), logs / "moto.log"
    server = start([str(moto), "-H", "127.0.0.1", "-p", str(port)], log)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_ok(url), server, log, "moto_server", 60)
        except RuntimeError as err:
            unavailable(f"moto's S3 server does not start on this machine: {err}")
        yield S3(url)
    finally:
        stop(server)


# --- MLflow tracking server -------------------------------------------------------------------------------

@contextlib.contextmanager
def mlflow_server(logs: Path, backend_store_uri: str, artifacts_destination: str,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """`mlflow server` with proxied artifact access on 127.0.0.1; yields its URL once /health answers.
    `env`: what the server itself needs for its stores (S3 credentials, MLFLOW_S3_ENDPOINT_URL); the
    clients need none of it."""
    port, log = free_port(), logs / "mlflow-server.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts_destination]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))} | (env or {})
    # No job runner: it starts 8 huey processes (GenAI judges, trace jobs) that tracking does not need.
    full_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server = start(cmd, log, env=full_env, cwd=logs)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_ok(f"{url}/health"), server, log, "mlflow server", MLFLOW_START_S)
        except RuntimeError as err:
            pytest.fail(str(err))
        yield url
    finally:
        stop(server)
