"""The generated project's Kubernetes manifests (deploy/kubernetes/, database=postgresql only: a
SQLite file is one process's database; ownership.py checks the others have none).

No cluster runs here: every manifest is validated offline with kubernetes-validate against the
oldest and the newest Kubernetes it bundles schemas for (strict: an unknown field fails), and
what the manifests say about the service is checked against the service itself: its routes, its
`serve` options and environment variables, its settings, its Dockerfile.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conftest import project_env, run_ok
from template_config import Combination, combinations, default_combination
from test_deploy import instructions, parse_dockerfile

POSTGRESQL = [combo for combo in combinations() if combo.database == "postgresql"]
SYNCED = Combination(
    {**default_combination().answers, "database": "postgresql", "cache_backend": "redis"}
)
# The oldest Kubernetes still commonly run, and the newest kubernetes-validate knows.
VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
KUSTOMIZATIONS = ("deploy/kubernetes", "deploy/kubernetes/migrate")

# Run inside a synced project: what the manifests must agree with.
FACTS = """
import json, typer
from {package}.cli import app
from {package}.main import create_app
from {package}.settings import Settings

commands = typer.main.get_command(app).commands
options, worker_options = (
    {{
        opt: {{"default": param.default, "envvar": param.envvar}}
        for param in commands[name].params if param.param_type_name == "option"
        for opt in param.opts
    }}
    for name in ("serve", "worker")
)
routes = sorted(path for path, ops in create_app().openapi()["paths"].items() if "get" in ops)
env = sorted(
    (group.model_config.get("env_prefix") or "") + name
    for field in Settings.model_fields.values()
    for group in [field.annotation]
    for name in group.model_fields
)
facts = {{"options": options, "worker_options": worker_options, "routes": routes, "env": env}}
print(json.dumps(facts))
"""


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifests(project_dir: Path) -> dict[str, dict[str, Any]]:
    """kind -> the one resource of that kind, from every kustomization's resources; the job
    workers' (cache_backend=redis) as "worker <kind>"."""
    found: dict[str, dict[str, Any]] = {}
    for directory in KUSTOMIZATIONS:
        kustomization = documents(project_dir / directory / "kustomization.yaml")[0]
        for name in kustomization["resources"]:
            for doc in documents(project_dir / directory / name):
                labels = doc["metadata"].get("labels", {})
                worker = labels.get("app.kubernetes.io/component") == "worker"
                key = f"worker {doc['kind']}" if worker else doc["kind"]
                assert key not in found, f"two {key} resources"
                found[key] = doc
    return found


def container(resource: dict[str, Any]) -> dict[str, Any]:
    [only] = resource["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(params=POSTGRESQL, ids=[combo.id for combo in POSTGRESQL])
def project(request, render):
    return render(request.param)


def test_every_manifest_validates_and_every_kustomization_lists_its_files(project) -> None:
    for directory in KUSTOMIZATIONS:
        root = project.project_dir / directory
        kustomization = documents(root / "kustomization.yaml")[0]
        files = sorted(p.name for p in root.glob("*.yaml") if p.name != "kustomization.yaml")
        assert sorted(kustomization["resources"]) == files, directory
        for name in files:
            for doc in documents(root / name):
                for version in VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as exc:
                        pytest.fail(f"{directory}/{name} on Kubernetes {version}: {exc}")
    found = manifests(project.project_dir)
    # With Redis, the job workers and the imports' claim they share with the web pods.
    workers = ["worker Deployment", "worker PodDisruptionBudget", "PersistentVolumeClaim"]
    assert sorted(found) == sorted(
        ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"]
        + ["PodDisruptionBudget", "Job"]
        + (workers if project.combo.cache_backend == "redis" else [])
    )


def test_validation_fails_on_a_broken_manifest(project) -> None:
    """The validation above can fail: a misspelt field and a wrong type are refused."""
    deployment = manifests(project.project_dir)["Deployment"]
    misspelt = json.loads(json.dumps(deployment))
    container(misspelt)["readinesProbe"] = container(misspelt).pop("readinessProbe")
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["replicas"] = "three"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_manifests_agree_with_the_image_and_each_other(project) -> None:
    found = manifests(project.project_dir)
    deployment, job = found["Deployment"], found["Job"]
    pod = deployment["spec"]["template"]
    app = container(deployment)
    runtime = parse_dockerfile(project.project_dir / "Dockerfile")[-1]
    slug = project.slug

    # One set of labels selects the pods everywhere.
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert found["Service"]["spec"]["selector"] == labels
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    target = found["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert found["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    assert found["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1

    # The port: the image's PORT, the ConfigMap's PORT, the container port the Service targets.
    [port] = app["ports"]
    config = found["ConfigMap"]["data"]
    assert port["containerPort"] == int(runtime.env["PORT"]) == int(config["PORT"])
    assert found["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert app[probe]["httpGet"]["port"] == port["name"], probe
    assert app["envFrom"] == [{"configMapRef": {"name": found["ConfigMap"]["metadata"]["name"]}}]

    # The command is the image's CMD with the grace period spelt out, and a SIGKILL comes only
    # after the preStop pause and that grace period.
    [cmd] = instructions(runtime, "CMD")
    args = app["args"]
    assert args[: len(json.loads(cmd))] == json.loads(cmd)
    graceful = int(args[args.index("--graceful-timeout") + 1])
    pause = app["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= int(pause[1]) + graceful + 5

    # Non-root as the image's user; a read-only root with emptyDirs where the service writes
    # (and the imports' shared claim, with Redis).
    user = re.search(r"--uid (\d+)", " ".join(instructions(runtime, "RUN"))).group(1)
    worker = found.get("worker Deployment")
    for resource in (deployment, job, *([worker] if worker else [])):
        spec = resource["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == int(user)
        security = container(resource)["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(container(resource)["resources"])
        writable = {
            v["name"] for v in spec["volumes"] if {"emptyDir", "persistentVolumeClaim"} & set(v)
        }
        mounts = {m["mountPath"]: m["name"] for m in container(resource)["volumeMounts"]}
        assert set(mounts.values()) <= writable
        assert "/tmp" in mounts
    workdir = instructions(runtime, "WORKDIR")[-1]
    upload_dir = "var/uploads"  # settings.py's default APP_UPLOAD_DIR, under the WORKDIR
    assert any(f"{workdir}/{upload_dir}".startswith(path + "/") for path in mounts_of(deployment))

    # Secrets only by reference: no Secret in the repository, no secret value in the ConfigMap.
    assert not list(project.project_dir.glob("deploy/**/*secret*"))
    redis = {"REDIS_URL"} if project.combo.cache_backend == "redis" else set()
    sqlalchemy = {"APP_SECRET_KEY"} if project.combo.orm == "sqlalchemy" else set()
    for resource, expected in (
        (deployment, {"APP_SECRET_KEY", "DATABASE_URL", *redis}),
        (job, {"DATABASE_URL", *sqlalchemy}),
    ):
        refs = {
            env["name"]: env["valueFrom"]["secretKeyRef"]
            for env in container(resource)["env"]
            if "secretKeyRef" in env.get("valueFrom", {})
        }
        assert set(refs) == expected, resource["kind"]
        assert {ref["name"] for ref in refs.values()} == {slug}
        assert all("value" not in env for env in container(resource)["env"] if env["name"] in refs)
    assert not {"APP_SECRET_KEY", "DATABASE_URL", "REDIS_URL"} & set(config)
    assert config["DATABASE_POOLER"] == "pgbouncer"
    if project.combo.cache_backend == "redis":
        assert_the_workers_run_the_imports_the_web_pods_store(found, slug)
    else:  # the jobs run in the web pods
        assert worker is None
        assert "PersistentVolumeClaim" not in found

    # The migration Job runs what compose's migrate service runs, straight to PostgreSQL.
    compose = yaml.safe_load((project.project_dir / "compose.yaml").read_text())
    migrate_image = compose["services"]["migrate"].get("image", f"{slug}:local")
    assert container(job)["image"] == migrate_image.split(":")[0]
    if project.combo.orm == "sqlalchemy":
        assert container(job)["args"] == [slug, "db", "upgrade"]
    else:
        assert "args" not in container(job)  # the migrate stage's CMD: prisma migrate deploy
    job_env = {env["name"]: env for env in container(job)["env"]}
    assert job_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "database-direct-url"
    assert "DATABASE_POOLER" not in job_env
    images = [
        documents(project.project_dir / directory / "kustomization.yaml")[0]["images"][0]["name"]
        for directory in KUSTOMIZATIONS
    ]
    assert images == [app["image"], container(job)["image"]]


def assert_the_workers_run_the_imports_the_web_pods_store(
    found: dict[str, dict[str, Any]], slug: str
) -> None:
    deployment, worker = found["Deployment"], found["worker Deployment"]
    web, jobs = container(deployment), container(worker)
    # The same image and configuration; the same secrets as the web pods (checked above).
    assert jobs["image"] == web["image"]
    assert jobs["envFrom"] == web["envFrom"]
    args = jobs["args"]
    assert args[:2] == [slug, "worker"]
    # Prometheus reaches its metrics on the port it serves them on.
    [port] = jobs["ports"]
    assert port["containerPort"] == int(args[args.index("--metrics-port") + 1])
    # Both probes read the heartbeat file it touches, on a writable mount.
    heartbeat = args[args.index("--heartbeat-file") + 1]
    for probe in ("livenessProbe", "startupProbe"):
        assert heartbeat in " ".join(jobs[probe]["exec"]["command"]), probe
    assert any(heartbeat.startswith(path + "/") for path in mounts_of(worker))
    # Its own pool: its concurrent jobs, through the same PgBouncer.
    own = {env["name"]: env.get("value") for env in jobs["env"]}
    assert int(own["DATABASE_POOL_SIZE"]) >= 4 + 1  # JOBS_CONCURRENCY's default, + requeuing
    # Web and worker pods mount one ReadWriteMany claim where imports are stored.
    claim = found["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for resource in (deployment, worker):
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in resource["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounted = {m["name"]: m["mountPath"] for m in container(resource)["volumeMounts"]}
        assert {mounted[name]: claim_name for name, claim_name in volumes.items()} == {
            "/app/var/uploads/imports": claim["metadata"]["name"]
        }, resource["metadata"]["name"]
    # Its own disruption budget, selecting its pods only.
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert worker["spec"]["selector"]["matchLabels"] == labels
    assert found["worker PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert labels != deployment["spec"]["template"]["metadata"]["labels"]


def mounts_of(resource: dict[str, Any]) -> list[str]:
    return [m["mountPath"] for m in container(resource)["volumeMounts"]]


def test_probes_options_and_configuration_name_what_the_service_has(synced, servers) -> None:
    project = synced(SYNCED)
    script = FACTS.format(package=project.answers["package_name"])
    facts = json.loads(
        run_ok(["uv", "run", "python", "-c", script], project.project_dir, project_env(SYNCED))
    )
    found = manifests(project.project_dir)
    app = container(found["Deployment"])

    # The probes are real GET routes of the app: readiness checks the database, liveness not.
    assert app["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert app["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert app[probe]["httpGet"]["path"] in facts["routes"], probe

    # serve has the options the Deployment passes; PORT and WEB_CONCURRENCY are its envvars.
    options = facts["options"]
    args = app["args"]
    for arg in args[2:]:
        if arg.startswith("--"):
            assert arg in options, f"serve has no {arg} option"
    assert options["--port"]["envvar"] == "PORT"
    assert options["--workers"]["envvar"] == "WEB_CONCURRENCY"
    graceful = int(args[args.index("--graceful-timeout") + 1])
    assert graceful == options["--graceful-timeout"]["default"]

    # The worker has the options its Deployment passes (SYNCED renders Redis).
    worker_args = container(found["worker Deployment"])["args"]
    for arg in worker_args[2:]:
        if arg.startswith("--"):
            assert arg in facts["worker_options"], f"worker has no {arg} option"

    # Every ConfigMap key is a variable the service reads (a typo would be ignored silently).
    known = {name.upper() for name in facts["env"]} | {"PORT", "WEB_CONCURRENCY"}
    unknown = set(found["ConfigMap"]["data"]) - known
    assert not unknown, f"the service reads no {sorted(unknown)}"
    assert {env["name"] for env in app["env"]} <= known
