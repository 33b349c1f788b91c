"""The Kubernetes manifests of deploy/k8s/, checked without a cluster.

Every manifest, and the Deployment as the GPU component changes it, is validated offline against the
Kubernetes API schemas bundled with kubernetes-validate (strict: an unknown or misspelt field fails).
Then the facts a schema cannot see: probes ask routes the app serves, ports agree with the Dockerfile
and IMGCLF_BIND, the IMGCLF_* variables are settings imgclf reads and parses, the pod runs as the
Dockerfile's non-root user on a read-only root filesystem with a writable /tmp, the model repository
comes read-only from the claim, the Service and the autoscaler point at the Deployment, and
kustomization.yaml lists every file. There is no kubectl here: `kustomize build` is reproduced for what
these files use (resources, one component's images and JSON 6902 patches, then the base's images).
"""

from __future__ import annotations

import copy
import re
import socket
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from imgclf.service import create_app
from imgclf.service.server.settings import ServerSettings
from imgclf.service.settings import Settings
from tests.system.test_container import DOCKERFILE, image_env, known_settings, only, parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
GPU = K8S / "gpu"
PROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# The oldest Kubernetes the manifests claim (the preStop sleep action is on by default from 1.30) and a
# newer one; kubernetes-validate carries both schema sets.
K8S_VERSIONS = ("1.30", "1.33")
KUSTOMIZE_API = "kustomize.config.k8s.io/"


# --- reading and rendering ----------------------------------------------------------------------------

def load_documents(path: Path) -> list[dict]:
    """Return the YAML documents of a file (empty ones dropped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kustomization(folder: Path) -> dict:
    """Return the kustomization.yaml of ``folder`` (a Kustomization or a Component)."""
    (doc,) = load_documents(folder / "kustomization.yaml")
    assert doc["apiVersion"].startswith(KUSTOMIZE_API), doc["apiVersion"]
    return doc


def split_image(image: str) -> tuple[str, str]:
    """Return (name, tag) of an image reference without a digest."""
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "")


def apply_images(resources: list[dict], images: list[dict]) -> None:
    """Apply kustomize's images transformer (name -> newName and/or newTag) to every container."""
    for resource in resources:
        for container in containers(resource):
            name, tag = split_image(container["image"])
            for rule in images:
                if rule["name"] == name:
                    name, tag = rule.get("newName", name), rule.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def pointer(document, path: str) -> tuple[object, str]:
    """Return the parent of a JSON pointer's target and the target's key (RFC 6901 unescaped)."""
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
    for part in parents:
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document, last


def apply_json6902(document: dict, operations: list[dict]) -> None:
    """Apply the RFC 6902 operations these manifests use (add, replace, remove) to ``document``."""
    for operation in operations:
        parent, key = pointer(document, operation["path"])
        op = operation["op"]
        assert op in ("add", "replace", "remove"), f"the test does not implement JSON patch op {op!r}"
        if isinstance(parent, list):
            index = len(parent) if key == "-" else int(key)
            if op == "remove":
                del parent[index]
            elif op == "replace":
                parent[index] = operation["value"]
            else:
                parent.insert(index, operation["value"])
        elif op == "remove":
            del parent[key]
        else:
            assert op == "add" or key in parent, f"replace of a missing member: {operation['path']}"
            parent[key] = copy.deepcopy(operation["value"])


def apply_component(resources: list[dict], folder: Path) -> None:
    """Apply a kustomize Component made of images and inline JSON 6902 patches, as kustomize would."""
    component = kustomization(folder)
    assert component["kind"] == "Component"
    assert set(component) <= {"apiVersion", "kind", "images", "patches"}, \
        f"{folder.name}/kustomization.yaml uses fields this test does not render: {sorted(component)}"
    for patch in component.get("patches", []):
        target = patch["target"]
        matched = [r for r in resources if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
                   and r["apiVersion"] == f"{target['group']}/{target['version']}".lstrip("/")]
        assert len(matched) == 1, f"patch target {target} matches {len(matched)} resources"
        apply_json6902(matched[0], yaml.safe_load(patch["patch"]))
    apply_images(resources, component.get("images", []))


def render(*components: Path) -> list[dict]:
    """Return what `kustomize build deploy/k8s` gives with ``components`` enabled.

    kustomize accumulates the resources, then applies the components, then the base's own transformers
    (its images), in that order.
    """
    base = kustomization(K8S)
    assert base["kind"] == "Kustomization"
    assert set(base) <= {"apiVersion", "kind", "resources", "components", "images"}, \
        f"kustomization.yaml uses fields this test does not render: {sorted(base)}"
    resources = [doc for name in base["resources"] for doc in load_documents(K8S / name)]
    for folder in [K8S / c for c in base.get("components", [])] + list(components):
        apply_component(resources, folder)
    apply_images(resources, base.get("images", []))
    return resources


def one(resources: list[dict], kind: str) -> dict:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def containers(resource: dict) -> list[dict]:
    """Return the containers of a workload's pod template ([] for other kinds)."""
    return resource.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def imgclf_container(deployment: dict) -> dict:
    (container,) = [c for c in containers(deployment) if c["name"] == "imgclf"]
    return container


def env_of(container: dict) -> dict[str, str]:
    """Return the container's variables; each must be a literal value (the tests parse them)."""
    env = {}
    for variable in container.get("env", []):
        assert "value" in variable, f"{variable['name']}: only literal values are checked here"
        env[variable["name"]] = variable["value"]
    return env


def port_number(container: dict, port: int | str) -> int:
    """Return the container port a probe or Service names, by number or by name; fail if it has none."""
    ports = {p["containerPort"]: p for p in container["ports"]}
    if isinstance(port, str):
        ports = {p["name"]: p for p in container["ports"] if "name" in p}
    assert port in ports, f"port {port!r} is not among the container's ports {container['ports']}"
    return ports[port]["containerPort"]


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def deployment(manifests) -> dict:
    return one(manifests, "Deployment")


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    return imgclf_container(deployment)


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app({"model_repository": tmp_path_factory.mktemp("empty-repository"), "load_in_background": False})


# --- the files -------------------------------------------------------------------------------------------

def test_the_kustomization_lists_every_manifest_and_every_folder_is_a_component():
    base = kustomization(K8S)
    listed = set(base["resources"])
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"listed but missing: {sorted(listed - on_disk)}; not listed: {sorted(on_disk - listed)}"
    for folder in (p for p in K8S.iterdir() if p.is_dir()):
        assert kustomization(folder)["kind"] == "Component", f"{folder.name}/ is not a kustomize Component"
        assert [p.name for p in folder.iterdir()] == ["kustomization.yaml"], \
            f"{folder.name}/ holds files its kustomization does not use (its patches are inline)"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas_offline(version, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"kubernetes-validate opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)  # the schemas are bundled: nothing is fetched
    gpu_deployment = one(render(GPU), "Deployment")
    for resource in [*render(), gpu_deployment]:
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        try:
            validated = kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} is not valid Kubernetes {version}: {error.message} at {list(error.path)}")
        assert validated == version, f"{name} was checked against {validated}, not {version}"


def test_the_validator_rejects_a_misspelt_field(deployment):
    # The check above is worth something only if strict validation refuses an unknown field.
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --- the Deployment ----------------------------------------------------------------------------------------

def test_probes_ask_routes_the_app_serves(container, deployment, app):
    adapter = app.url_map.bind("localhost")
    client = app.test_client()
    paths = {}
    for probe in ("startupProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert port_number(container, get["port"]) == port_number(container, "http")
        adapter.match(get["path"], method="GET")  # raises NotFound / MethodNotAllowed
        assert client.get(get["path"]).status_code == 200, f"{probe} {get['path']} on a ready, empty service"
        paths[probe] = get["path"]
    endpoint = lambda path: adapter.match(path, method="GET")[0]
    # Liveness must not wait for the models (a slow load would restart the pod forever); readiness must.
    assert endpoint(paths["livenessProbe"]) == endpoint(paths["startupProbe"]) == endpoint("/healthz")
    # Readiness over gRPC (grpc.health.v1 answers what /readyz does: tests/unit/service/protocols/grpc), on the
    # port the workers bind; the service name "" is the whole server.
    readiness = container["readinessProbe"]["grpc"]
    assert readiness.get("service", "") == ""
    grpc_bind = env_of(container)["IMGCLF_GRPC_BIND"]
    assert readiness["port"] == port_number(container, "grpc") == int(grpc_bind.rsplit(":", 1)[1])
    assert grpc_bind.rsplit(":", 1)[0] == "0.0.0.0"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    adapter.match(annotations["prometheus.io/path"], method="GET")
    assert int(annotations["prometheus.io/port"]) == port_number(container, "http")


def test_probe_timings_leave_time_to_load_models(container):
    startup, readiness, liveness = (container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "workers import TensorFlow first"
    assert liveness["periodSeconds"] * liveness.get("failureThreshold", 3) >= 30
    for probe in (startup, readiness, liveness):
        assert probe.get("timeoutSeconds", 1) < probe.get("periodSeconds", 10)


def test_the_port_is_the_images_and_the_bind_address(container, dockerfile):
    port = next(p for p in container["ports"] if p["name"] == "http")
    exposed = int(only(dockerfile, "EXPOSE").args.split("/")[0])
    bind = env_of(container).get("IMGCLF_BIND") or image_env(dockerfile)["IMGCLF_BIND"]
    assert port["containerPort"] == exposed == int(bind.rsplit(":", 1)[1])
    assert bind.rsplit(":", 1)[0] == "0.0.0.0", "the kubelet and the Service reach the pod from outside"


def test_every_imgclf_variable_is_a_setting_and_parses(container, dockerfile):
    env = env_of(container)
    unknown = {k for k in env if k.startswith("IMGCLF_")} - known_settings()
    assert not unknown, f"the Deployment sets variables imgclf does not read: {sorted(unknown)}"
    merged = {**image_env(dockerfile), **env}
    Settings.from_env(merged)  # raises UsageError on a malformed value, in any section


def test_the_pod_is_non_root_with_a_read_only_root_and_a_writable_tmp(deployment, container, dockerfile):
    pod = deployment["spec"]["template"]["spec"]
    pod_security, security = pod.get("securityContext", {}), container["securityContext"]
    merged = {**pod_security, **security}
    user = only(dockerfile, "USER").args.split(":")
    assert merged["runAsNonRoot"] is True
    assert [str(merged["runAsUser"]), str(merged.get("runAsGroup", merged["runAsUser"]))] == user
    assert merged["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add")
    assert security["readOnlyRootFilesystem"] is True
    assert not security.get("privileged")
    assert pod.get("automountServiceAccountToken") is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not [v for v in volumes.values() if "hostPath" in v], "no host paths"
    writable = {m["mountPath"] for m in container["volumeMounts"]
                if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]}
    assert "/tmp" in writable, "gunicorn's heartbeat files and tempfile need a writable /tmp"
    metrics_dir = Path(env_of(container)["PROMETHEUS_MULTIPROC_DIR"])
    assert any(metrics_dir.is_relative_to(path) for path in writable), f"{metrics_dir} is not on a writable mount"


def test_the_model_repository_is_the_claim_mounted_read_only(manifests, deployment, container, dockerfile):
    claim = one(manifests, "PersistentVolumeClaim")
    repository = env_of(container).get("IMGCLF_MODEL_REPOSITORY") or image_env(dockerfile)["IMGCLF_MODEL_REPOSITORY"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == repository]
    assert mount["readOnly"] is True
    assert only(dockerfile, "VOLUME").args == f'["{repository}"]'
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert {"ReadWriteMany", "ReadOnlyMany"} & set(claim["spec"]["accessModes"]), "pods on several nodes read it"


def test_resources_are_requested_and_limited(container):
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], kind
    assert "nvidia.com/gpu" not in resources["limits"], "the GPU is the gpu component's option"


def test_a_stop_lets_in_flight_requests_finish(deployment, container):
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    graceful = ServerSettings.from_env(env_of(container)).graceful_timeout
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > sleep + graceful


def test_the_image_is_the_placeholder_of_the_project_version(container):
    name, tag = split_image(container["image"])
    assert name == "ghcr.io/OWNER/imgclf"
    assert tag.startswith(PROJECT_VERSION + "-"), f"tag {tag!r} does not name version {PROJECT_VERSION}"
    guide = (ROOT / "docs" / "deployment" / "kubernetes.md").read_text()
    assert "kubectl apply -k deploy/k8s" in guide and name in guide


# --- Service, autoscaler, GPU ------------------------------------------------------------------------------

def test_the_service_targets_the_container_port_of_the_pods(manifests, deployment, container):
    service = one(manifests, "Service")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    http, grpc = service["spec"]["ports"]
    assert (http["port"], port_number(container, http["targetPort"])) == (80, 8000)
    assert (grpc["port"], port_number(container, grpc["targetPort"])) == (8500, 8500)


def test_the_autoscaler_scales_the_deployment_by_cpu(manifests, deployment, container):
    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == \
        (deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "kubectl apply would reset the autoscaler's count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert all("cpu" in c["resources"]["requests"] for c in containers(deployment)), "utilisation is of requests"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_the_gpu_component_adds_a_gpu_and_the_gpu_image(container):
    gpu_deployment = one(render(GPU), "Deployment")
    gpu = imgclf_container(gpu_deployment)
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
    name, tag = split_image(gpu["image"])
    assert name == split_image(container["image"])[0] and re.fullmatch(re.escape(PROJECT_VERSION) + r"-gpu", tag)
    tolerations = gpu_deployment["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # Everything else is the base Deployment's.
    assert {k: v for k, v in gpu.items() if k not in ("image", "resources")} == \
        {k: v for k, v in container.items() if k not in ("image", "resources")}


def test_the_base_images_entry_renames_only():
    # kustomize applies the base's images after the component's: a newTag there would undo the GPU tag.
    for rule in kustomization(K8S).get("images", []):
        assert set(rule) <= {"name", "newName"}, f"the base's images entry may only rename: {rule}"
