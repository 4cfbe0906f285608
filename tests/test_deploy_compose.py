"""compose/: the compose-spec JSON schema (check-jsonschema, offline) and Debian's
`docker-compose config` accept it; health checks and dependency conditions are where they
must be; and the seeding, worker, healthcheck and `run` command lines, as Compose resolves
them, migrate a small archive here against local Redis, S3 (moto) and a Storage SCP.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers.counting_scp import counting_scp
from tests.peers.redis import RedisPeer
from tests.test_deploy_support import (
    ROOT,
    ImageDefaults,
    Proc,
    relocate_url,
    run_once,
    run_tool,
    tool,
    url_host_port,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILES = sorted(COMPOSE_DIR.glob("*.yaml")) + sorted(COMPOSE_DIR.glob("*.yml"))
SECRETS = {
    "S3_ACCESS_KEY": "migrator-test",
    "S3_SECRET_KEY": "test-secret-key",
    "FLOWER_BASIC_AUTH": "admin:test-password",
}


def docker_compose() -> str:
    if not shutil.which("docker-compose"):
        raise AssertionError(
            "docker-compose is not installed: bash scripts/bootstrap.sh --dev installs "
            "Debian's docker-compose package"
        )
    return "docker-compose"


def compose_config(tmp: Path, variables: dict[str, str], *extra: str) -> Any:
    """`docker-compose config` with only these variables (no caller environment, no .env)."""
    env_file = tmp / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
    return run_tool(
        [
            docker_compose(),
            "-f",
            str(COMPOSE_DIR / "compose.yaml"),
            "--project-directory",
            str(COMPOSE_DIR),
            "--env-file",
            str(env_file),
            "--profile",
            "run",
            "--profile",
            "monitoring",
            "config",
            *extra,
        ],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp)},
        cwd=tmp,
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("compose")
    proc = compose_config(tmp, {**SECRETS, "SEED_COUNT": "100"})
    assert proc.returncode == 0, proc.stderr
    resolved: dict[str, Any] = yaml.safe_load(proc.stdout)["services"]
    return resolved


def test_there_is_a_compose_file() -> None:
    assert COMPOSE_DIR / "compose.yaml" in COMPOSE_FILES


def test_compose_files_pass_the_compose_spec_schema(tmp_path: Path) -> None:
    checker = tool("check-jsonschema", "bash scripts/bootstrap.sh --dev")
    proc = run_tool([checker, "--builtin-schema", "vendor.compose-spec", *map(str, COMPOSE_FILES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and the schema does reject a misspelt key.
    bad = tmp_path / "compose.yaml"
    bad.write_text(
        (COMPOSE_DIR / "compose.yaml").read_text().replace("stop_grace_period", "stop_grace_perod")
    )
    proc = run_tool([checker, "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert proc.returncode == 1, proc.stdout


def test_docker_compose_config_accepts_it_and_requires_the_secrets(tmp_path: Path) -> None:
    proc = compose_config(tmp_path, SECRETS, "-q")
    assert proc.returncode == 0, proc.stderr
    # The documented starting point, compose/.env.example, is a complete configuration.
    example = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert SECRETS.keys() <= example.keys()
    proc = compose_config(tmp_path, example, "-q")
    assert proc.returncode == 0, proc.stderr
    for missing in SECRETS:
        variables = {k: v for k, v in SECRETS.items() if k != missing}
        proc = compose_config(tmp_path, variables, "-q")
        assert proc.returncode == 1, f"config passed without {missing}"
        assert missing in proc.stderr, proc.stderr


def _seconds(duration: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", duration):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def _one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") == "no"


def test_healthchecks_and_dependency_conditions(services: dict[str, Any]) -> None:
    assert {"redis", "s3", "s3-seed", "orthanc", "worker", "flower", "run"} <= services.keys()
    for name, svc in services.items():
        if not _one_shot(svc):  # a long-running service must say when it is healthy
            test = svc.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        for dep, how in svc.get("depends_on", {}).items():
            condition = how.get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), (
                f"{name} depends on {dep} without a health or completion condition"
            )
            target = services[dep]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep}, which has none"
            else:
                assert _one_shot(target), f"{name} waits for {dep} to complete; it restarts"
    expect = {
        "worker": {"redis": "service_healthy"},
        "flower": {"redis": "service_healthy"},
        "s3-seed": {"s3": "service_healthy"},
        "run": {
            "redis": "service_healthy",
            "worker": "service_healthy",
            "orthanc": "service_healthy",
            "s3-seed": "service_completed_successfully",
        },
    }
    for name, deps in expect.items():
        got = {d: h["condition"] for d, h in services[name]["depends_on"].items()}
        assert got == deps, (name, got)
    assert services["worker"]["healthcheck"]["test"][1:3] == ["migrator", "check-health"]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert services["run"]["profiles"] == ["run"]


def test_worker_container_is_hardened_and_stops_softly(services: dict[str, Any]) -> None:
    worker = services["worker"]
    env = worker["environment"]
    assert worker["command"] == ["worker"] and "entrypoint" not in worker
    assert ImageDefaults().entrypoint == ["migrator"]
    assert env["REMAP_SIGTERM"] == "SIGQUIT"
    assert _seconds(worker["stop_grace_period"]) >= float(env["MIGRATOR_SOFT_SHUTDOWN"]) + 20
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert worker.get("init") in (None, False)
    for name in ("worker", "run", "flower", "s3-seed"):
        svc = services[name]
        assert svc["read_only"] is True, name
        assert any(t.split(":")[0] == "/tmp" for t in svc["tmpfs"]), name
        assert svc["user"].split(":")[0] not in ("0", "root"), name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
    assert worker["deploy"]["replicas"] >= 1
    assert "container_name" not in worker  # scalable


def test_redis_persists_and_never_evicts(services: dict[str, Any]) -> None:
    redis_ = services["redis"]
    cmd = redis_["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    # a named volume mounted at /data ("redis-data:/data:rw" once compose has normalised it)
    assert any(str(v).split(":")[1:2] == ["/data"] for v in redis_["volumes"]), redis_["volumes"]
    assert "ports" not in redis_  # reachable only on the stack's network


def test_images_are_pinned_and_ports_stay_local(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: unpinned image {image}"
        for port in svc.get("ports", []):
            text = json.dumps(port)
            assert "127.0.0.1" in text, f"{name} publishes {text} beyond localhost"
    assert services["flower"]["environment"]["MIGRATOR_FLOWER_BASIC_AUTH"] == "admin:test-password"


def test_compose_commands_migrate(services: dict[str, Any], tmp_path: Path, moto_s3: Any) -> None:
    """s3-seed, worker, the worker's healthcheck and run, as Compose resolved them."""
    image = ImageDefaults()

    def prepared(name: str, **addr: Any) -> tuple[list[str], dict[str, str]]:
        svc = services[name]
        argv = list(svc.get("entrypoint") or image.entrypoint) + list(
            svc.get("command") or ([] if svc.get("entrypoint") else image.cmd)
        )
        # Named volumes: their mount points become local folders.
        for vol in svc.get("volumes", []):
            if isinstance(vol, dict) and vol.get("type") == "volume":
                source, target = vol["source"], vol["target"]
            elif isinstance(vol, str) and not vol.startswith(("/", ".")):
                source, target = vol.split(":")[:2]
            else:
                continue
            local = tmp_path / "volumes" / source
            local.mkdir(parents=True, exist_ok=True)
            argv = [a.replace(target, str(local), 1) if a.startswith(target) else a for a in argv]
        env = {**image.local_env(tmp_path / name), **svc.get("environment", {})}
        env = {k: str(v) for k, v in env.items()}
        assert url_host_port(env["MIGRATOR_REDIS_URL"]) == ("redis", 6379)
        env["MIGRATOR_REDIS_URL"] = relocate_url(
            env["MIGRATOR_REDIS_URL"], "127.0.0.1", addr["redis"]
        )
        assert (env["MIGRATOR_HOST"], env["MIGRATOR_PORT"]) == ("orthanc", "4242")
        env["MIGRATOR_HOST"], env["MIGRATOR_PORT"] = "127.0.0.1", str(addr["scp"])
        assert env["MIGRATOR_S3_ENDPOINT"] == "http://s3:9000"
        env["MIGRATOR_S3_ENDPOINT"] = addr["s3"]
        return image.local_argv(argv), env

    peer = RedisPeer(tmp_path / "redis", appendonly=True).start()
    worker: Proc | None = None
    try:
        with counting_scp() as scp:
            addr = {"redis": peer.port, "scp": scp.port, "s3": moto_s3.endpoint}
            s_argv, s_env = prepared("s3-seed", **addr)
            seeded = run_once(s_argv, s_env, tmp_path, timeout=120)
            assert seeded.returncode == 0, seeded.stdout + seeded.stderr
            assert "seed: 100 files" in seeded.stdout

            w_argv, w_env = prepared("worker", **addr)
            assert w_argv == ["migrator", "worker"]
            worker = Proc(w_argv, w_env, tmp_path / "worker.log", tmp_path)
            check = services["worker"]["healthcheck"]["test"][1:]  # after "CMD"

            def healthy() -> bool:
                assert worker is not None and worker.alive(), worker and worker.output()
                return run_once(check, w_env, tmp_path).returncode == 0

            wait_for(healthy, 60, "the worker's healthcheck")

            r_argv, r_env = prepared("run", **addr)
            assert r_argv[:2] == ["migrator", "run"], r_argv
            ran = run_once(r_argv, r_env, tmp_path, timeout=120)
            assert ran.returncode == 0, ran.stdout + ran.stderr + worker.output()
            report_path = Path(r_argv[r_argv.index("--report") + 1])
            assert report_path.parent == tmp_path / "volumes" / "reports"
            totals = json.loads(report_path.read_text())["totals"]
            assert totals["planned"] == totals["stored"] == 100, totals
            assert scp.distinct == 100 and scp.total == 100
    finally:
        if worker is not None:
            worker.stop()
        peer.stop()
