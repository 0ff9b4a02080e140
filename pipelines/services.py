"""Local launchers for the scaled-out services, on 127.0.0.1 ports: an ``mlflow server``, a moto S3 server, a
``prefect server`` and an ``mlflow models serve`` scoring server. The tests use them; ``python -m pipelines.services up|down|status`` runs them by hand
(``infra/README.md``).

Each launcher starts the server in its own process group, waits until its health endpoint answers (bounded wait),
and returns a :class:`Service` whose :meth:`Service.stop` sends SIGTERM to the group (SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from maskdcpt.config import find_root

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    """A started server: its name, process, base URL, health URL and log file."""

    name: str
    proc: subprocess.Popen
    url: str
    health: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL after ``grace`` seconds."""
        stop_pid(self.proc.pid, grace)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_pid(pid: int, grace: float = 15.0) -> None:
    """Terminate the process group led by ``pid`` (SIGTERM, then SIGKILL after ``grace`` s)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Poll ``url`` until it answers HTTP 200 (bounded by ``timeout`` s); raise ``RuntimeError`` with the log tail
    if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    stop_pid(proc.pid, 5)
    raise RuntimeError(f"{url}: not healthy after {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _start(name: str, cmd: list[str], url: str, health: str, log: Path, env: dict[str, str] | None,
           timeout: float) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, **(env or {}))
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=True,
                                stdin=subprocess.DEVNULL)
    wait_healthy(health, proc, timeout, log)
    return Service(name, proc, url, health, log, env or {})


def start_moto(port: int | None = None, log_dir: Path | None = None, timeout: float = 60) -> Service:
    """A moto S3-compatible server on 127.0.0.1 (credentials: any, e.g. ``testing``/``testing``)."""
    port = port or free_port()
    log = Path(log_dir or find_root() / ".cache" / "services") / f"moto-{port}.log"
    url = f"http://127.0.0.1:{port}"
    return _start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], url,
                  f"{url}/moto-api/", log, None, timeout)


def start_mlflow(port: int | None = None, backend_uri: str | None = None, artifacts_destination: str | None = None,
                 s3_endpoint: str | None = None, log_dir: Path | None = None, timeout: float = 120) -> Service:
    """An ``mlflow server`` (one worker) on 127.0.0.1 serving artifacts through its proxy.

    ``artifacts_destination`` may be ``s3://bucket/prefix`` (then ``s3_endpoint`` and the AWS credentials in the
    environment are used by the server, never by the clients).
    """
    root = find_root()
    port = port or free_port()
    log = Path(log_dir or root / ".cache" / "services") / f"mlflow-{port}.log"
    backend_uri = backend_uri or f"sqlite:///{root / '.cache' / 'services' / f'mlflow-{port}.db'}"
    dest = artifacts_destination or (root / ".cache" / "services" / f"mlflow-{port}-artifacts").as_uri()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--artifacts-destination", dest,
           "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint} if s3_endpoint else {}
    url = f"http://127.0.0.1:{port}"
    return _start("mlflow", cmd, url, f"{url}/health", log, env, timeout)


def start_model_server(model_uri: str, tracking_uri: str | None = None, port: int | None = None,
                       log_dir: Path | None = None, timeout: float = 240) -> Service:
    """``mlflow models serve -m <model_uri> --env-manager local`` on 127.0.0.1 (a restorer from the registry:
    ``models:/maskdcpt-nafnet-5d@champion``); ready when ``/ping`` answers. ``tracking_uri`` resolves ``models:/``
    URIs (default: the environment's ``MLFLOW_TRACKING_URI``)."""
    root = find_root()
    port = port or free_port()
    log = Path(log_dir or root / ".cache" / "services") / f"serve-{port}.log"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    # mlflow execs `uvicorn` by name: this environment's bin first on PATH, activated or not
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if tracking_uri:
        env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri)
    url = f"http://127.0.0.1:{port}"
    return _start("mlflow-serve", cmd, url, f"{url}/ping", log, env, timeout)


def start_prefect(port: int | None = None, home: Path | None = None, log_dir: Path | None = None,
                  timeout: float = 180) -> Service:
    """A ``prefect server start`` on 127.0.0.1 (its own ``PREFECT_HOME``); clients use ``service.env``."""
    root = find_root()
    port = port or free_port()
    home = Path(home or root / ".cache" / "services" / f"prefect-{port}")
    log = Path(log_dir or root / ".cache" / "services") / f"prefect-{port}.log"
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false"}
    service = _start("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port)], f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}/api/health",
                     log, env, timeout)
    service.env = {"PREFECT_API_URL": env["PREFECT_API_URL"]}
    return service


def main(argv: list[str] | None = None) -> int:
    """``up``: start MLflow (:5000), moto (:5055) and Prefect (:4200) and record their PIDs; ``down``: stop them."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--moto-port", type=int, default=5055)
    parser.add_argument("--prefect-port", type=int, default=4200)
    args = parser.parse_args(argv)
    state = find_root() / ".cache" / "services" / "services.json"
    if args.action == "up":
        started = {}
        moto = start_moto(args.moto_port)
        started["moto"] = {"pid": moto.pid, "url": moto.url}
        mlf = start_mlflow(args.mlflow_port)
        started["mlflow"] = {"pid": mlf.pid, "url": mlf.url}
        pre = start_prefect(args.prefect_port)
        started["prefect"] = {"pid": pre.pid, "url": pre.url}
        state.write_text(json.dumps(started, indent=2))
        print(json.dumps(started, indent=2))
        print(f"export MLFLOW_TRACKING_URI={mlf.url} PREFECT_API_URL={pre.url}")
        return 0
    if not state.is_file():
        print("no services recorded")
        return 0
    started = json.loads(state.read_text())
    for name, info in started.items():
        if args.action == "down":
            stop_pid(info["pid"])
            print(f"stopped {name} (pid {info['pid']})")
        else:
            try:
                os.killpg(info["pid"], 0)
                print(f"{name}: running, pid {info['pid']}, {info['url']}")
            except ProcessLookupError:
                print(f"{name}: not running")
    if args.action == "down":
        state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
