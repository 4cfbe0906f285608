"""k8s/: every overlay renders with kustomize and passes kubernetes-validate --strict for 1.32;
the pods are locked down; and the worker, planner (with its seeding init container) and
Flower command lines of the rendered dev overlay really migrate and serve, run here as
processes against a local redis-server, a local Storage SCP and a local S3 (moto).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from migrator.ledger import Ledger
from migrator.netutil import free_port
from tests.peers.counting_scp import counting_scp
from tests.peers.redis import RedisPeer
from tests.test_deploy_support import (
    K8S_VERSION,
    OVERLAYS,
    ImageDefaults,
    Proc,
    container,
    container_env,
    docs,
    find,
    k8s_argv,
    pod_spec,
    relocate_url,
    render,
    run_once,
    run_tool,
    secret_text,
    tool,
    url_host_port,
    wait_for,
)
from workers.app import QUEUE

pytestmark = pytest.mark.timeout(240)

OUR_IMAGE = {
    "dev": "pacs-migrator:local",
    "prod": "registry.example.org/imaging/pacs-migrator:0.1.0",
    "keda": "registry.example.org/imaging/pacs-migrator:0.1.0",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: docs(render(overlay)) for overlay in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate_strict(overlay: str) -> None:
    validator = tool("kubernetes-validate", "bash scripts/bootstrap.sh --dev")
    proc = run_tool([validator, "--strict", "-k", K8S_VERSION, "-"], input=render(overlay))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"kubernetes-validate failed for {overlay}:\n{out}"
    assert "ERROR" not in out, out
    # Every object of ours was checked against a schema; only KEDA's CRDs have none.
    unchecked = [line for line in out.splitlines() if "Couldn't find schema" in line]
    assert all("keda.sh" in line for line in unchecked), unchecked
    assert out.count("passed for resource") >= 10, out


def test_strict_validation_catches_a_typo() -> None:
    """The validator is not a rubber stamp: a misspelt field fails under --strict."""
    validator = tool("kubernetes-validate", "bash scripts/bootstrap.sh --dev")
    text = render("dev").replace("terminationGracePeriodSeconds:", "terminationGracePeriod:", 1)
    proc = run_tool([validator, "--strict", "-k", K8S_VERSION, "-"], input=text)
    assert proc.returncode != 0, proc.stdout


def _workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job")]


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    workloads = _workloads(rendered[overlay])
    assert len(workloads) >= 4
    for w in workloads:
        spec = pod_spec(w)
        where = f"{overlay}: {w['kind']}/{w['metadata']['name']}"
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            what = f"{where} container {c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert sc.get("privileged") is not True, what
            requests_ = c.get("resources", {}).get("requests", {})
            assert "cpu" in requests_ and "memory" in requests_, what
            assert "memory" in c.get("resources", {}).get("limits", {}), what
            if c["image"].split(":")[0].endswith("pacs-migrator"):
                assert c["image"] == OUR_IMAGE[overlay], what
    for ns in (o for o in rendered[overlay] if o["kind"] == "Namespace"):
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_shut_down_softly_within_the_grace_period(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = rendered[overlay]
    image = ImageDefaults()
    worker = find(objs, "Deployment", "migrator-worker")
    spec = pod_spec(worker)
    c = container(worker, "worker")
    env = container_env(objs, worker, c, external_secrets=True)
    argv = k8s_argv(c, env, image)
    # Celery as PID 1 in exec form: `migrator worker` execs it; no shell, no init in between.
    assert argv[:2] == ["migrator", "worker"], argv
    assert not {"sh", "bash", "/bin/sh", "tini", "dumb-init"} & set(argv), argv
    assert env["REMAP_SIGTERM"] == "SIGQUIT"
    soft = float(env["MIGRATOR_SOFT_SHUTDOWN"])
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= soft + 20, (grace, soft)  # margin for the cold shutdown after it
    # The timing the worker validates at start holds for the rendered settings.
    vt, hard = float(env["MIGRATOR_VISIBILITY_TIMEOUT"]), float(env["MIGRATOR_TIME_LIMIT"])
    assert vt > hard + float(env["MIGRATOR_MAX_LIMITER_WAIT"])
    # Liveness is the heartbeat, checked by the real command.
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["exec"]["command"][:2] == ["migrator", "check-health"], probe
        # A probe outlives one TTL of missed beats before the pod is restarted.
        p = c[probe]
        assert p["periodSeconds"] * p["failureThreshold"] >= float(env["MIGRATOR_HEARTBEAT_TTL"])
    assert any(v["mountPath"] == "/tmp" for v in c["volumeMounts"])
    pdb = find(objs, "PodDisruptionBudget", "migrator-worker")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_planner_job(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = rendered[overlay]
    job = find(objs, "Job", "migrator-planner")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    assert any(r["action"] == "FailJob" and 2 in r["onExitCodes"]["values"] for r in rules)
    c = container(job, "planner")
    env = container_env(objs, job, c, external_secrets=True)
    argv = k8s_argv(c, env, ImageDefaults())
    assert argv[:2] == ["migrator", "plan"], argv
    if overlay == "prod":  # sharded: one S3 prefix per index
        assert spec["completions"] > 1 and spec["parallelism"] >= 1
        assert argv[2] == "s3://archive-bucket/dicom/shard-0/", argv


def test_redis_is_persistent_and_never_evicts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in ("dev", "prod"):
        objs = rendered[overlay]
        sts = find(objs, "StatefulSet", "migrator-redis")
        c = container(sts, "redis")
        env = container_env(objs, sts, c, external_secrets=True)
        args = k8s_argv(c, env, ImageDefaults())
        assert args[args.index("--appendonly") + 1] == "yes"
        assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
        assert "$(" not in " ".join(args)
        assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        assert any(m["mountPath"] == "/data" for m in c["volumeMounts"])


def test_flower_has_auth_and_a_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["prod"]
    flower = find(objs, "Deployment", "migrator-flower")
    c = container(flower, "flower")
    auth = [e for e in c["env"] if e["name"] == "MIGRATOR_FLOWER_BASIC_AUTH"]
    assert auth and auth[0]["valueFrom"]["secretKeyRef"]["name"] == "migrator-flower"
    service = find(objs, "Service", "migrator-flower")
    assert (
        service["spec"]["selector"].items()
        <= flower["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["type"] == "ClusterIP"


def test_keda_example_targets_the_real_queue(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["keda"]
    scaled = find(objs, "ScaledObject", "migrator-worker")
    find(objs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert scaled["spec"]["minReplicaCount"] >= 1  # never to zero with batches in flight
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == QUEUE
    auth = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["name"] == "migrator-redis"
    caveat = Path(__file__).parent.parent / "k8s" / "overlays" / "keda" / "scaledobject.yaml"
    assert "CAVEAT (in-flight batches)" in caveat.read_text()


def test_dev_orthanc_config_matches_compose() -> None:
    root = Path(__file__).parent.parent
    a = json.loads((root / "compose" / "orthanc.json").read_text())
    b = json.loads((root / "k8s" / "overlays" / "dev" / "orthanc.json").read_text())
    assert a == b


# --- the real command lines -----------------------------------------------------------------


def _local_env(
    env: dict[str, str],
    image: ImageDefaults,
    tmp: Path,
    *,
    redis_port: int,
    scp_port: int | None = None,
    s3_endpoint: str | None = None,
) -> dict[str, str]:
    """The container's environment with cluster addresses mapped to the local peers."""
    local = {**image.local_env(tmp), **env}
    if "MIGRATOR_REDIS_URL" in local:  # not in the seeding init container
        url = local["MIGRATOR_REDIS_URL"]
        assert url_host_port(url) == ("migrator-redis", 6379), secret_text(url)
        local["MIGRATOR_REDIS_URL"] = relocate_url(url, "127.0.0.1", redis_port)
    if scp_port is not None:
        assert (local["MIGRATOR_HOST"], local["MIGRATOR_PORT"]) == ("orthanc", "4242")
        local["MIGRATOR_HOST"], local["MIGRATOR_PORT"] = "127.0.0.1", str(scp_port)
    if s3_endpoint is not None:
        assert local["MIGRATOR_S3_ENDPOINT"] == "http://s3:9000"
        local["MIGRATOR_S3_ENDPOINT"] = s3_endpoint
    return local


def test_dev_overlay_commands_migrate_and_serve(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path, moto_s3: Any
) -> None:
    """Seed (planner's init container), worker, planner, the worker's liveness probe and
    Flower, each with the exact argv and environment of the rendered dev overlay."""
    objs = rendered["dev"]
    image = ImageDefaults()
    worker = find(objs, "Deployment", "migrator-worker")
    planner = find(objs, "Job", "migrator-planner")
    flower = find(objs, "Deployment", "migrator-flower")
    password = container_env(objs, worker, container(worker, "worker"))["REDIS_PASSWORD"]

    peer = RedisPeer(tmp_path / "redis").start()
    procs: list[Proc] = []
    try:
        admin = peer.client()
        admin.config_set("requirepass", password)  # as the StatefulSet's --requirepass
        with counting_scp() as scp:
            addr = {"redis_port": peer.port, "scp_port": scp.port, "s3_endpoint": moto_s3.endpoint}

            def prepared(
                obj: dict[str, Any], name: str, init: bool = False
            ) -> tuple[list[str], dict[str, str]]:
                c = container(obj, name, init=init)
                env = container_env(objs, obj, c)
                argv = image.local_argv(k8s_argv(c, env, image))
                return argv, _local_env(env, image, tmp_path / name, **addr)

            # The worker Deployment's container, then its liveness probe until it passes.
            w_argv, w_env = prepared(worker, "worker")
            w_env["MIGRATOR_METRICS_PORT"] = str(free_port())  # a free port, not 9808
            w_env["MIGRATOR_METRICS_ADDRESS"] = "127.0.0.1"
            procs.append(Proc(w_argv, w_env, tmp_path / "worker.log", tmp_path))
            probe = container(worker, "worker")["livenessProbe"]["exec"]["command"]

            def healthy() -> bool:
                assert procs[0].alive(), procs[0].output()
                return run_once(probe, w_env, tmp_path).returncode == 0

            wait_for(healthy, 60, "the worker's liveness probe")

            # The planner Job: its seeding init container, then the planner itself.
            s_argv, s_env = prepared(planner, "seed", init=True)
            seeded = run_once(s_argv, s_env, tmp_path, timeout=120)
            assert seeded.returncode == 0, seeded.stdout + seeded.stderr
            assert "seed: 200 files" in seeded.stdout
            p_argv, p_env = prepared(planner, "planner")
            assert p_argv[:3] == ["migrator", "plan", "s3://demo/archive/"], p_argv
            planned = run_once(p_argv, p_env, tmp_path, timeout=120)
            assert planned.returncode == 0, planned.stdout + planned.stderr
            job = p_env["MIGRATOR_JOB"]
            assert planned.stdout.strip().splitlines()[-1] == job

            client = redis.Redis.from_url(
                relocate_url(w_env["MIGRATOR_REDIS_URL"], "127.0.0.1", peer.port)
            )
            ledger = Ledger(client, job)

            def done() -> bool:
                assert procs[0].alive(), procs[0].output()
                counts = ledger.counts()
                return counts["planned"] == 200 and counts["in_flight"] == 0

            wait_for(done, 90, f"job {job} to finish")
            counts = ledger.counts()
            assert counts["stored"] == 200, counts
            assert scp.distinct == 200 and scp.total == 200
            # The worker's metrics endpoint counted them too.
            metrics = requests.get(
                f"http://127.0.0.1:{w_env['MIGRATOR_METRICS_PORT']}/metrics", timeout=10
            ).text
            assert 'state="stored"' in metrics

            # Flower's Deployment: up, /healthcheck open (its probes), the API behind auth.
            f_argv, f_env = prepared(flower, "flower")
            f_env["MIGRATOR_FLOWER_ADDRESS"] = "127.0.0.1"
            f_env["MIGRATOR_FLOWER_PORT"] = str(free_port())
            procs.append(Proc(f_argv, f_env, tmp_path / "flower.log", tmp_path))
            base = f"http://127.0.0.1:{f_env['MIGRATOR_FLOWER_PORT']}"
            path = container(flower, "flower")["readinessProbe"]["httpGet"]["path"]

            def flower_up() -> bool:
                assert procs[1].alive(), procs[1].output()
                try:
                    return requests.get(base + path, timeout=2).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_for(flower_up, 30, "Flower's readiness probe")
            assert requests.get(f"{base}/api/workers", timeout=10).status_code == 401
            user, _, pw = f_env["MIGRATOR_FLOWER_BASIC_AUTH"].partition(":")
            assert requests.get(f"{base}/api/workers", auth=(user, pw), timeout=10).ok
    finally:
        for proc in procs:
            proc.stop()
        peer.stop()


def test_check_health_probe_fails_without_a_worker(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The liveness probe's command, with no worker on this host: non-zero (1)."""
    objs = rendered["dev"]
    worker = find(objs, "Deployment", "migrator-worker")
    c = container(worker, "worker")
    env = container_env(objs, worker, c)
    peer = RedisPeer(tmp_path / "redis").start()
    try:
        peer.client().config_set("requirepass", env["REDIS_PASSWORD"])
        local = _local_env(env, ImageDefaults(), tmp_path, redis_port=peer.port)
        started = time.monotonic()
        proc = run_once(c["livenessProbe"]["exec"]["command"], local, tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert time.monotonic() - started < c["livenessProbe"]["timeoutSeconds"]
    finally:
        peer.stop()
