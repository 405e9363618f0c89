#!/usr/bin/env python3
"""Offline validation of the Kubernetes manifests in k8s/: the test command's
`k8s/` step (scripts/test.sh). Needs no cluster and no network.

    python scripts/validate-k8s.py --bin-dir target/debug k8s

Each check catches a mistake that `kubectl apply` would only show on a live
cluster, or not at all:

1. Schemas. Every resource against the OpenAPI schemas of the Kubernetes
   releases in KUBERNETES_VERSIONS, with kubernetes-validate in strict mode:
   an unknown (misspelt) field is an error, a wrong type is an error, and so
   is a kind it has no schema for (the tool itself only warns about those).
2. Self-test of (1): a misspelt field, a wrong type and an unknown kind put
   into a copy of a manifest must each be rejected, so that a validator that
   silently became lenient fails this step instead of passing everything.
3. The kustomization lists every manifest except *.example.yaml.
4. References between resources: Secrets, ConfigMaps and their keys,
   volumes, ServiceAccounts and Roles, Service and PodDisruptionBudget
   selectors, named ports, a StatefulSet's headless Service.
5. The gateway and worker containers use only environment variables and
   flags the binaries accept (read from their --help), set their shutdown
   grace explicitly, and get a terminationGracePeriodSeconds that covers it.
6. Addresses: URLs in containers' environments (OTLP endpoints, every URL of
   AMQP_URL lists, also inside Secrets) and the collector's exporter
   endpoints name a Service, or a StatefulSet pod behind its headless
   Service, defined here, on a port it serves.
7. The OpenTelemetry Collector configuration: every component a pipeline
   names is defined.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

try:
    import kubernetes_validate
    import yaml
except ImportError as e:
    sys.exit(
        f"validate-k8s.py: {e.name} is missing: run it with the test venv's python "
        "(.tools/venv/bin/python, see scripts/test-requirements.txt)"
    )

# The oldest release whose API these manifests use (gRPC probes are GA from
# 1.27), and the newest one kubernetes-validate ships schemas for. Raise both
# with the pin in scripts/test-requirements.txt.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")

# The binaries of this repository, by the name a container's command starts with.
BINARIES = ("gateway", "worker")
# Read by the binaries outside their clap flags (docs/observability.md).
EXTRA_ENV = re.compile(r"^(RUST_LOG|OTEL_[A-Z0-9_]+)$")
# What a pod needs after its shutdown grace: the gateway answers the calls
# still waiting and closes its broker connection (5 s each at most), a worker
# finishes its acks and closes (10 s), then both export their last spans.
SHUTDOWN_MARGIN_SECONDS = 15
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")

Resource = dict[str, Any]


class Manifests:
    """The resources of a folder of manifests, each with the file it came from."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = sorted(folder.glob("*.yaml"))
        if not self.files:
            raise SystemExit(f"validate-k8s.py: no *.yaml files in {folder}")
        self.resources: list[tuple[Path, Resource]] = []
        self.kustomization: Resource | None = None
        for path in self.files:
            try:
                with path.open(encoding="utf-8") as f:
                    docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                raise SystemExit(f"{path}: not valid YAML: {e}") from None
            for doc in docs:
                if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                    raise SystemExit(f"{path}: a document without kind and apiVersion")
                if doc["kind"] == "Kustomization":
                    self.kustomization = doc
                else:
                    self.resources.append((path, doc))

    def named(self, kind: str, name: str) -> Resource | None:
        for _, r in self.resources:
            if r["kind"] == kind and r.get("metadata", {}).get("name") == name:
                return r
        return None

    def of_kind(self, *kinds: str) -> Iterator[Resource]:
        return (r for _, r in self.resources if r["kind"] in kinds)


def label(resource: Resource) -> str:
    return f"{resource['kind']}/{resource.get('metadata', {}).get('name', '?')}"


def pod_template(resource: Resource) -> Resource | None:
    if resource["kind"] in POD_KINDS:
        return resource.get("spec", {}).get("template")
    return None


def containers(pod_spec: Resource) -> list[Resource]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def secret_data(secret: Resource) -> dict[str, str]:
    # stringData is what a person writes; data holds base64, only its keys matter here.
    return {**{k: "" for k in secret.get("data", {})}, **secret.get("stringData", {})}


# ---------------------------------------------------------------------------
# 1, 2: schemas


def check_schemas(m: Manifests, errors: list[str]) -> int:
    checked = 0
    for path, resource in m.resources:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(top level)"
                errors.append(f"{path}: {label(resource)} against Kubernetes {version}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{path}: {label(resource)}: {e.message}: not a Kubernetes {version} kind")
            else:
                checked += 1
    return checked


def self_test(m: Manifests, errors: list[str]) -> None:
    """The schema check must reject what it is here to reject."""
    deployment = next(m.of_kind("Deployment"), None)
    if deployment is None:
        errors.append("self-test: no Deployment to mutate")
        return
    typo = copy.deepcopy(deployment)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe", {"tcpSocket": {"port": 1}})
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    unknown_kind = copy.deepcopy(deployment)
    unknown_kind["kind"] = "Deploymnet"
    for what, bad in (
        ("a misspelt field (readinesProbe)", typo),
        ("a wrong type (replicas: two)", wrong_type),
        ("an unknown kind (Deploymnet)", unknown_kind),
    ):
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(bad, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError):
                continue
            errors.append(f"self-test: kubernetes-validate accepted {what} for Kubernetes {version}")


# ---------------------------------------------------------------------------
# 3: kustomization


def check_kustomization(m: Manifests, errors: list[str]) -> None:
    k = m.kustomization
    if k is None:
        errors.append(f"{m.folder}: no kustomization.yaml")
        return
    listed = list(k.get("resources", []))
    wanted = [p.name for p in m.files if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")]
    for name in listed:
        if not (m.folder / name).is_file():
            errors.append(f"kustomization.yaml: resource {name} does not exist")
    for name in wanted:
        if name not in listed:
            errors.append(f"kustomization.yaml: {name} is not listed in resources")
    images = {
        c.get("image", "").rsplit(":", 1)[0]
        for r in m.of_kind(*POD_KINDS)
        for c in containers(r["spec"]["template"]["spec"])
    }
    for image in k.get("images", []):
        if image.get("name") not in images:
            errors.append(f"kustomization.yaml: image {image.get('name')} is used by no container")


# ---------------------------------------------------------------------------
# 4: references


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_key(m: Manifests, kind: str, name: str, key: str | None, where: str, errors: list[str]) -> None:
    target = m.named(kind, name)
    if target is None:
        errors.append(f"{where}: {kind} {name} is not defined in {m.folder}")
        return
    keys = secret_data(target) if kind == "Secret" else target.get("data", {})
    if key is not None and key not in keys:
        errors.append(f"{where}: {kind} {name} has no key {key}")


def check_references(m: Manifests, errors: list[str]) -> None:
    templates = [(r, pod_template(r)) for r in m.of_kind(*POD_KINDS)]
    for resource, template in templates:
        where = label(resource)
        spec = resource["spec"]
        pod = template["spec"]
        labels = template.get("metadata", {}).get("labels", {})
        if not matches(spec.get("selector", {}).get("matchLabels", {}), labels):
            errors.append(f"{where}: selector does not match its pod template's labels")
        account = pod.get("serviceAccountName")
        if account and account != "default" and m.named("ServiceAccount", account) is None:
            errors.append(f"{where}: ServiceAccount {account} is not defined")
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        for v in pod.get("volumes", []):
            vwhere = f"{where} volume {v['name']}"
            if "secret" in v:
                for item in v["secret"].get("items", [{"key": None}]):
                    check_key(m, "Secret", v["secret"]["secretName"], item["key"], vwhere, errors)
            if "configMap" in v:
                for item in v["configMap"].get("items", [{"key": None}]):
                    check_key(m, "ConfigMap", v["configMap"]["name"], item["key"], vwhere, errors)
        if resource["kind"] == "StatefulSet":
            service = m.named("Service", spec.get("serviceName", ""))
            if service is None or service["spec"].get("clusterIP") != "None":
                name = spec.get("serviceName")
                errors.append(f"{where}: serviceName {name} is not a headless Service defined here")
        for c in containers(pod):
            cwhere = f"{where} container {c['name']}"
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    errors.append(f"{cwhere}: volumeMount {mount['name']} has no volume")
            for env in c.get("env", []):
                source = env.get("valueFrom", {})
                for kind, ref in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if ref in source and not source[ref].get("optional", False):
                        name, key = source[ref]["name"], source[ref]["key"]
                        check_key(m, kind, name, key, f"{cwhere} env {env['name']}", errors)
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(probe_name)
                if not probe:
                    continue
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = probe.get(handler, {}).get("port")
                    if port is None:
                        continue
                    if isinstance(port, str) and port not in ports:
                        errors.append(f"{cwhere}: {probe_name} port {port} is not a named container port")
                    if isinstance(port, int) and port not in ports.values():
                        errors.append(f"{cwhere}: {probe_name} port {port} is not a container port")

    def pods_selected(selector: dict[str, str]) -> list[Resource]:
        return [t["spec"] for _, t in templates if matches(selector, t.get("metadata", {}).get("labels", {}))]

    for service in m.of_kind("Service"):
        pods = pods_selected(service["spec"].get("selector", {}))
        if not pods:
            errors.append(f"{label(service)}: selector matches no pod template")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str):
                names = {p.get("name") for pod in pods for c in containers(pod) for p in c.get("ports", [])}
                if target not in names:
                    errors.append(f"{label(service)}: targetPort {target} is not a named port of its pods")
    for pdb in m.of_kind("PodDisruptionBudget"):
        if not pods_selected(pdb["spec"].get("selector", {}).get("matchLabels", {})):
            errors.append(f"{label(pdb)}: selector matches no pod template")
    for binding in m.of_kind("RoleBinding"):
        ref = binding["roleRef"]
        if m.named(ref["kind"], ref["name"]) is None:
            errors.append(f"{label(binding)}: {ref['kind']} {ref['name']} is not defined")
        for subject in binding.get("subjects", []):
            if subject["kind"] == "ServiceAccount" and m.named("ServiceAccount", subject["name"]) is None:
                errors.append(f"{label(binding)}: ServiceAccount {subject['name']} is not defined")


# ---------------------------------------------------------------------------
# 5: the binaries' flags


def parse_duration(text: str) -> float | None:
    """The subset of humantime durations the manifests use: 500ms, 30s, 2m, 1h, 1m30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(int(n) * units[u] for n, u in parts)


def binary_help(bin_dir: Path, name: str) -> tuple[set[str], set[str]]:
    """The environment variables and long flags `name --help` lists."""
    path = bin_dir / name
    if not path.is_file():
        raise SystemExit(f"validate-k8s.py: {path} does not exist: build it first (cargo build --workspace --bins)")
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True, timeout=30).stdout
    envs = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", out))
    flags = set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", out))
    if not envs or not flags:
        raise SystemExit(f"validate-k8s.py: found no flags in `{path} --help`")
    return envs, flags


def check_binaries(m: Manifests, bin_dir: Path, errors: list[str]) -> int:
    helps = {name: binary_help(bin_dir, name) for name in BINARIES}
    checked = 0
    for resource in m.of_kind(*POD_KINDS):
        pod = resource["spec"]["template"]["spec"]
        for c in containers(pod):
            argv = list(c.get("command", [])) + list(c.get("args", []))
            if not argv or argv[0] not in helps:
                continue
            where = f"{label(resource)} container {c['name']}"
            envs, flags = helps[argv[0]]
            values = {}
            for env in c.get("env", []):
                checked += 1
                values[env["name"]] = env.get("value")
                if env["name"] not in envs and not EXTRA_ENV.match(env["name"]):
                    errors.append(f"{where}: {argv[0]} reads no environment variable {env['name']}")
            for arg in argv[1:]:
                if arg.startswith("--"):
                    checked += 1
                    if arg[2:].split("=", 1)[0] not in flags:
                        errors.append(f"{where}: {argv[0]} has no flag {arg}")
            grace_env = next((e for e in envs if e.endswith("_SHUTDOWN_GRACE")), None)
            if grace_env is None:
                errors.append(f"{where}: `{argv[0]} --help` lists no *_SHUTDOWN_GRACE variable")
                continue
            grace = parse_duration(values.get(grace_env) or "")
            if grace is None:
                errors.append(f"{where}: set {grace_env} (as e.g. 30s) so that the termination grace can be checked")
                continue
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            sleep = float(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0.0
            needed = sleep + grace + SHUTDOWN_MARGIN_SECONDS
            given = pod.get("terminationGracePeriodSeconds", 30)
            if given < needed:
                errors.append(
                    f"{where}: terminationGracePeriodSeconds {given} is below preStop {sleep:g} s"
                    f" + {grace_env} {grace:g} s + {SHUTDOWN_MARGIN_SECONDS} s"
                )
    return checked


# ---------------------------------------------------------------------------
# 6, 7: addresses and the collector's configuration


def check_address(m: Manifests, host: str, port: int, where: str, errors: list[str]) -> None:
    parts = host.split(".")
    if len(parts) == 1:
        service = m.named("Service", host)
        if service is None:
            errors.append(f"{where}: {host}:{port}: no Service {host}")
        elif port not in {p["port"] for p in service["spec"].get("ports", [])}:
            errors.append(f"{where}: {host}:{port}: Service {host} has no port {port}")
        return
    if len(parts) == 2:
        pod_name, service_name = parts
        service = m.named("Service", service_name)
        for sts in m.of_kind("StatefulSet"):
            spec = sts["spec"]
            prefix = sts["metadata"]["name"] + "-"
            if spec.get("serviceName") != service_name or not pod_name.startswith(prefix):
                continue
            ordinal, replicas, name = pod_name[len(prefix) :], spec.get("replicas", 1), sts["metadata"]["name"]
            ports = {p["containerPort"] for c in containers(spec["template"]["spec"]) for p in c.get("ports", [])}
            if service is None or service["spec"].get("clusterIP") != "None":
                errors.append(f"{where}: {host}: {service_name} is not a headless Service defined here")
            elif not ordinal.isdigit() or int(ordinal) >= replicas:
                errors.append(f"{where}: {host}: StatefulSet {name} has pods 0 to {replicas - 1} only")
            elif port not in ports:
                errors.append(f"{where}: {host}:{port}: the pods of StatefulSet {name} serve no port {port}")
            return
    errors.append(f"{where}: {host}:{port} is neither a Service nor a StatefulSet pod defined in {m.folder}")


def check_url_list(m: Manifests, text: str, where: str, errors: list[str]) -> int:
    checked = 0
    for url in text.split(","):
        parts = urlsplit(url.strip())
        defaults = {"http": 80, "https": 443, "amqp": 5672, "amqps": 5671}
        if parts.scheme not in defaults:
            continue
        try:
            port = parts.port or defaults[parts.scheme]
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            errors.append(f"{where}: a {parts.scheme} URL without a valid host and port")
            continue
        check_address(m, parts.hostname, port, where, errors)
        checked += 1
    return checked


def check_addresses(m: Manifests, errors: list[str]) -> int:
    checked = 0
    for resource in m.of_kind(*POD_KINDS):
        for c in containers(resource["spec"]["template"]["spec"]):
            for env in c.get("env", []):
                where = f"{label(resource)} container {c['name']} env {env['name']}"
                if "value" in env:
                    checked += check_url_list(m, str(env["value"]), where, errors)
    for secret in m.of_kind("Secret"):
        for key, value in secret.get("stringData", {}).items():
            checked += check_url_list(m, value, f"{label(secret)} key {key}", errors)
    return checked


def check_collector(m: Manifests, errors: list[str]) -> int:
    configs = 0
    for config_map in m.of_kind("ConfigMap"):
        for key, text in config_map.get("data", {}).items():
            if not key.endswith((".yaml", ".yml")):
                continue
            where = f"{label(config_map)} key {key}"
            config = yaml.safe_load(text)
            if not isinstance(config, dict) or "pipelines" not in config.get("service", {}):
                continue
            configs += 1
            for name in config["service"].get("extensions", []):
                if name not in (config.get("extensions") or {}):
                    errors.append(f"{where}: service.extensions names {name}, which is not defined")
            for pipeline, parts in config["service"]["pipelines"].items():
                for section in ("receivers", "processors", "exporters"):
                    for name in parts.get(section, []):
                        if name not in (config.get(section) or {}):
                            what = f"{section[:-1]} {name}"
                            errors.append(f"{where}: pipeline {pipeline} uses {what}, which is not defined")
            for name, exporter in (config.get("exporters") or {}).items():
                endpoint = (exporter or {}).get("endpoint")
                if endpoint:
                    host, _, port = endpoint.rpartition(":")
                    check_address(m, host, int(port), f"{where} exporter {name}", errors)
    return configs


# ---------------------------------------------------------------------------


def report(folder: Path, errors: list[str]) -> int:
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"validate-k8s.py: {len(errors)} error(s) in {folder}/", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the manifests (k8s)")
    parser.add_argument(
        "--bin-dir", type=Path, required=True, help="where the built gateway and worker binaries are (target/debug)"
    )
    args = parser.parse_args()

    m = Manifests(args.folder)
    errors: list[str] = []
    validated = check_schemas(m, errors)
    self_test(m, errors)
    # The checks below read the resources as the schemas describe them.
    if errors:
        return report(args.folder, errors)
    check_kustomization(m, errors)
    check_references(m, errors)
    flags = check_binaries(m, args.bin_dir, errors)
    addresses = check_addresses(m, errors)
    collectors = check_collector(m, errors)
    if errors:
        return report(args.folder, errors)
    versions = " and ".join(v.rsplit(".", 1)[0] for v in KUBERNETES_VERSIONS)
    print(
        f"{len(m.resources)} resources in {len(m.files)} files valid against the Kubernetes {versions} schemas"
        f" (strict; {validated} checks; the self-test's bad manifests rejected);"
        f" kustomization, references, {flags} gateway/worker variables and flags,"
        f" {addresses} addresses and {collectors} collector configuration checked"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
