"""Validates Paygate's rendered Kubernetes manifests and its resolved compose file.

Run by scripts/validate-deploy with the virtualenv that has kubernetes-validate.

  check-manifests.py k8s RENDERED.yaml [--external SECRET.yaml]
  check-manifests.py compose RESOLVED.json

Kubernetes objects are validated, strictly (an unknown field is an error), against the
Kubernetes JSON schemas that the kubernetes-validate package ships, for each version in
KUBERNETES_VERSIONS; a kind with no schema is an error too (a typo in `kind` or
`apiVersion` is not let through as a warning). Then Paygate's own rules, which no schema
knows: every PAYGATE__ variable names a real setting of common/config/default.toml
(the config crate silently ignores a misspelt one), every pod is non-root with a
read-only root filesystem and no capabilities, probes point at the served paths and
port, the scrape annotations at the metrics port (which no Service exposes), every
Deployment has its Service selector, HPA and PodDisruptionBudget,
every file a PAYGATE__…_FILE variable names is inside a mounted volume whose Secret
has that key, every service that opens sealed data gets its key ring (the card ring
only where cards are opened: never the callback-dispatcher), and no consumer's HPA can
scale past the topics' partition count.

Prints one line per problem and exits 1 when there is any.
"""

import functools
import json
import sys
import tomllib
from pathlib import Path

import yaml
import kubernetes_validate.utils as kv

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = ROOT / "common" / "config" / "default.toml"
# The oldest Kubernetes minor Paygate supports and the newest kubectl it renders with.
KUBERNETES_VERSIONS = ["1.30.0", "1.33.0"]
# Deployments that consume Kafka: their replicas share a topic's partitions.
CONSUMERS = {"paygate-payment-processor", "paygate-callback-processor", "paygate-callback-dispatcher"}
# Services that open what is sealed with each key ring (`cards.key_ring()` and
# `secrets.key_ring()` in their code): the card ring seals card numbers and CVVs, the
# secrets ring gateways' callback secrets and merchants' webhook secrets and signing
# keys. Without its ring a service would fall back to the development key and refuse
# to start in production; a service not listed must not be given the ring.
KEY_RINGS = {
    "PAYGATE__CARDS__KEYS_FILE": {"api", "payment-processor"},
    "PAYGATE__SECRETS__KEYS_FILE": {"api", "callback-dispatcher", "demo-seed"},
    "PAYGATE__API__IDEMPOTENCY__FINGERPRINT_KEYS_FILE": {"api"},
}


def check_key_rings(where: str, service: str, env_names: set[str]) -> None:
    """Each service gets exactly the key rings it opens."""
    if service in ("init",):
        return
    for variable, users in KEY_RINGS.items():
        if service in users and variable not in env_names:
            problem(where, f"opens sealed data but is not given {variable}")
        if service not in users and variable in env_names:
            problem(where, f"is given {variable} but never opens what it seals")

# The schemas are large and the same for every object: read each once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


def setting_env_names() -> set[str]:
    """PAYGATE__SECTION__KEY for every setting in the embedded defaults, and its _FILE."""
    names: set[str] = set()

    def walk(table: dict, path: list[str]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, path + [key])
            else:
                name = "PAYGATE__" + "__".join(p.upper() for p in path + [key])
                names.update({name, name + "_FILE"})

    walk(tomllib.loads(DEFAULTS.read_text()), [])
    return names


SETTINGS = setting_env_names()


def check_env_name(where: str, name: str) -> None:
    if name.startswith("PAYGATE__") and name not in SETTINGS:
        problem(where, f"{name} names no setting of common/config/default.toml")


def name_of(obj: dict) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def validate_schema(obj: dict, where: str) -> None:
    for version in KUBERNETES_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problem(where, f"Kubernetes {version} schema: {path}: {error.message}")
            return
        except kv.SchemaNotFoundError:
            problem(where, f"no Kubernetes {version} schema for {obj.get('apiVersion')} {obj.get('kind')}")
            return


def selects(selector: dict, labels: dict) -> bool:
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_pod(where: str, pod: dict, secrets: dict, configmaps: dict) -> None:
    spec = pod.get("spec", {})
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        problem(where, "the pod does not set securityContext.runAsNonRoot: true")
    mounts_by_volume = {v.get("name"): v for v in spec.get("volumes", [])}
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        cwhere = f"{where} container {container.get('name')}"
        sc = container.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(cwhere, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(cwhere, "allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problem(cwhere, "capabilities.drop does not contain ALL")
        resources = container.get("resources", {})
        if not resources.get("requests") or not resources.get("limits", {}).get("memory"):
            problem(cwhere, "needs resource requests and a memory limit")
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            if ref is not None and ref not in configmaps:
                problem(cwhere, f"envFrom names ConfigMap {ref}, which is not rendered")
        # Files the container can read: mount path -> the secret keys mounted there.
        readable: dict[str, tuple[str, set[str]]] = {}
        for mount in container.get("volumeMounts", []):
            volume = mounts_by_volume.get(mount.get("name"))
            if volume is None:
                problem(cwhere, f"mounts volume {mount.get('name')}, which the pod does not define")
                continue
            sources = [volume.get("secret")] if "secret" in volume else [
                s.get("secret") for s in volume.get("projected", {}).get("sources", [])]
            for source in filter(None, sources):
                secret = source.get("secretName") or source.get("name")
                paths = {i["path"]: i["key"] for i in source.get("items", [])}
                for path, key in paths.items():
                    readable[f"{mount['mountPath'].rstrip('/')}/{path}"] = (secret, {key})
        for env in container.get("env", []):
            name = env.get("name", "")
            check_env_name(cwhere, name)
            if name.startswith("PAYGATE__") and name.endswith("_FILE"):
                path = env.get("value", "")
                if path not in readable:
                    problem(cwhere, f"{name}={path} is no file mounted from a Secret")
                    continue
                secret, keys = readable[path]
                if secret not in secrets:
                    problem(cwhere, f"{name} reads Secret {secret}, which is neither rendered nor in the example")
                elif not keys <= secrets[secret]:
                    problem(cwhere, f"{name} reads key {sorted(keys)} that Secret {secret} does not have")


def check_http(where: str, container: dict) -> int | None:
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    port = ports.get("http")
    if port is None:
        problem(where, "has no container port named http")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", port):
            problem(where, f"{probe} must GET {path} on the http port")
    return port


def check_k8s(rendered: list[dict], external: list[dict]) -> None:
    secrets: dict[str, set[str]] = {}
    for obj in rendered + external:
        if obj.get("kind") == "Secret":
            keys = set(obj.get("data", {})) | set(obj.get("stringData", {}))
            secrets[obj["metadata"]["name"]] = keys
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in rendered if o.get("kind") == "ConfigMap"}
    for name, data in configmaps.items():
        for key in data:
            check_env_name(f"ConfigMap/{name}", key)
        # The manifests are for production: what production refuses must not be set.
        if data.get("PAYGATE__ENVIRONMENT", "production") != "production":
            problem(f"ConfigMap/{name}", "PAYGATE__ENVIRONMENT must be production on Kubernetes")
        for key in [k for k in data if k.split("__")[-1].startswith("ALLOW_")]:
            if data[key] != "false":
                problem(f"ConfigMap/{name}", f"{key} must be false: production refuses permissive egress")
    partitions = None
    for data in configmaps.values():
        if "PAYGATE__KAFKA__PARTITIONS" in data:
            partitions = int(data["PAYGATE__KAFKA__PARTITIONS"])
    if partitions is None:
        partitions = tomllib.loads(DEFAULTS.read_text())["kafka"]["partitions"]

    by_kind: dict[str, list[dict]] = {}
    for obj in rendered + external:
        validate_schema(obj, name_of(obj))
    for obj in rendered:
        by_kind.setdefault(obj.get("kind", "?"), []).append(obj)

    for job in by_kind.get("Job", []):
        check_pod(name_of(job), job["spec"]["template"], secrets, configmaps)
    if not by_kind.get("Job"):
        problem("manifests", "no migration Job is rendered")

    for deployment in by_kind.get("Deployment", []):
        where = name_of(deployment)
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        labels = template.get("metadata", {}).get("labels", {})
        check_pod(where, template, secrets, configmaps)
        containers = template["spec"].get("containers", [])
        check_key_rings(where, name.removeprefix("paygate-"),
                        {e.get("name") for c in containers for e in c.get("env", [])})
        port = check_http(f"{where} container {containers[0].get('name')}", containers[0]) if containers else None
        annotations = template.get("metadata", {}).get("annotations", {})
        ports = {p.get("name"): p.get("containerPort") for p in (containers[0].get("ports", []) if containers else [])}
        metrics = ports.get("metrics")
        if metrics is None or metrics == port:
            problem(where, "needs a container port named metrics, apart from the http port")
        if (annotations.get("prometheus.io/scrape") != "true"
                or annotations.get("prometheus.io/path") != "/metrics"
                or annotations.get("prometheus.io/port") != str(metrics)):
            problem(where, "needs prometheus.io/scrape, /metrics and its metrics port as scrape annotations")
        if not any(selects(s["spec"].get("selector", {}), labels) for s in by_kind.get("Service", [])):
            problem(where, "no Service selects its pods")
        if not any(selects(p["spec"].get("selector", {}), labels) for p in by_kind.get("PodDisruptionBudget", [])):
            problem(where, "no PodDisruptionBudget selects its pods")
        hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", [])
                if h["spec"]["scaleTargetRef"].get("kind") == "Deployment"
                and h["spec"]["scaleTargetRef"].get("name") == name]
        if not hpas:
            problem(where, "no HorizontalPodAutoscaler scales it")
        for hpa in hpas:
            if name in CONSUMERS and hpa["spec"].get("maxReplicas", 0) > partitions:
                problem(name_of(hpa), f"maxReplicas {hpa['spec']['maxReplicas']} is more than the "
                        f"{partitions} partitions a consumer group can share")

    for service in by_kind.get("Service", []):
        if any(p.get("targetPort") == "metrics" for p in service["spec"].get("ports", [])):
            problem(name_of(service), "exposes the metrics port: /metrics is scraped from the pods only")
        selector = service["spec"].get("selector", {})
        if not any(selects(selector, d["spec"]["template"]["metadata"].get("labels", {}))
                   for d in by_kind.get("Deployment", [])):
            problem(name_of(service), "selects no Deployment's pods")


def check_compose(config: dict) -> None:
    for name, service in config.get("services", {}).items():
        environment = service.get("environment") or {}
        for key in environment:
            check_env_name(f"compose service {name}", key)
        if service.get("image", "").startswith("paygate/") and name != "gateway-sim":
            check_key_rings(f"compose service {name}", name, set(environment))
        for key, value in environment.items():
            if key.startswith("PAYGATE__") and key.endswith("_FILE"):
                # Compose mounts a secret at /run/secrets/<target or source>.
                mounted = {s.get("target") or s["source"] for s in service.get("secrets", [])}
                mounted = {m if m.startswith("/") else f"/run/secrets/{m}" for m in mounted}
                if value not in mounted:
                    problem(f"compose service {name}", f"{key}={value} is no secret mounted in the service")
        if service.get("image", "").startswith("paygate/") and name not in ("gateway-sim",):
            if not service.get("read_only") or "ALL" not in (service.get("cap_drop") or []):
                problem(f"compose service {name}", "needs read_only: true and cap_drop: [ALL]")


def load_yaml(path: str) -> list[dict]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "k8s":
        rendered = load_yaml(argv[1])
        external = load_yaml(argv[3]) if len(argv) >= 4 and argv[2] == "--external" else []
        check_k8s(rendered, external)
        what = f"{len(rendered) + len(external)} Kubernetes objects"
    elif len(argv) == 2 and argv[0] == "compose":
        with open(argv[1]) as f:
            check_compose(json.load(f))
        what = "the compose file"
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for line in problems:
        print(f"ERROR {line}")
    if problems:
        return 1
    print(f"ok: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
