"""Renders the Helm chart offline and validates every manifest.

- helm (the helm-python-sdk's embedded Helm library): `helm lint --strict` and `helm template`
  for each values file in this folder, plus the chart's defaults;
- Kubernetes kinds: kubernetes-validate's schemas for KUBE_VERSION, strict (unknown fields fail);
- KEDA ScaledObjects: keda/validate-keda.mjs (schemas from KEDA's CRDs via npm);
- wiring: each ScaledObject scales an existing worker Deployment and polls the coordinator
  Service's HTTP port at /scaling/<that Deployment's pool>; the coordinator runs >= 2
  replicas; workers drain on preStop and request their GPUs;
- refusals: values the chart must reject (one coordinator, a bad pool name) fail to render.

Exits non-zero on the first kind of failure, after printing every problem found.
"""

import copy
import json
import pathlib
import subprocess
import sys
import urllib.parse

import helm_python
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
CHART = HERE.parent / "chart" / "sdfarm"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "farm", "render"

problems: list[str] = []


def problem(text: str) -> None:
    problems.append(text)
    print(f"  FAIL {text}")


def render(values: dict | None) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_source", path)
                docs.append(doc)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_wiring(docs: list[dict], values: dict) -> None:
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    coordinators = [
        d for d in deployments.values()
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "coordinator"
    ]
    if len(coordinators) != 1:
        problem(f"expected one coordinator Deployment, found {len(coordinators)}")
        return
    coord = coordinators[0]
    if coord["spec"]["replicas"] < 2:
        problem(f"coordinator runs {coord['spec']['replicas']} replica(s), want >= 2")
    container = coord["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen_http = int(env_of(container)["SDFARM_HTTP"].rsplit(":", 1)[1])
    if ports.get("http") != listen_http:
        problem(f"coordinator container port http={ports.get('http')} but SDFARM_HTTP={listen_http}")

    services = [
        s for s in by_kind(docs, "Service")
        if s["spec"].get("selector", {}).get("app.kubernetes.io/component") == "coordinator"
    ]
    if len(services) != 1:
        problem(f"expected one coordinator Service, found {len(services)}")
        return
    svc = services[0]
    selector = svc["spec"]["selector"]
    pod_labels = coord["spec"]["template"]["metadata"]["labels"]
    if any(pod_labels.get(k) != v for k, v in selector.items()):
        problem("coordinator Service selector does not match the coordinator pods")
    svc_http = next(p for p in svc["spec"]["ports"] if p["name"] == "http")
    if svc_http["targetPort"] not in ("http", listen_http):
        problem(f"Service http port targets {svc_http['targetPort']}, not the coordinator's http port")
    host = f"{svc['metadata']['name']}.{NAMESPACE}.svc"

    pools = {}
    for name, d in deployments.items():
        if d["metadata"]["labels"].get("app.kubernetes.io/component") != "worker":
            continue
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        env = env_of(c)
        pools[name] = env["SDFARM_POOL"]
        grpc = urllib.parse.urlsplit(env["SDFARM_COORDINATOR"])
        svc_grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        if (grpc.hostname, grpc.port) != (host, svc_grpc["port"]):
            problem(f"{name}: SDFARM_COORDINATOR {env['SDFARM_COORDINATOR']} is not the coordinator Service")
        if "preStop" not in c.get("lifecycle", {}):
            problem(f"{name}: no preStop drain")
        if spec.get("terminationGracePeriodSeconds", 30) < 60:
            problem(f"{name}: termination grace too short for a render")
        pool_values = next(p for p in values_pools(values) if p["name"] == env["SDFARM_POOL"])
        if pool_values["gpus"] > 0:
            gpu = pool_values["gpuResource"]
            if c["resources"]["limits"].get(gpu) != pool_values["gpus"]:
                problem(f"{name}: GPU limit {gpu} missing")

    keda = values.get("keda", {}).get("enabled", True)
    scaled = by_kind(docs, "ScaledObject")
    if keda and len(scaled) != len(pools):
        problem(f"{len(pools)} worker pools but {len(scaled)} ScaledObjects")
    for so in scaled:
        name = so["metadata"]["name"]
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in pools:
            problem(f"{name}: scales {target}, which is not a worker Deployment")
            continue
        want_min = next(p for p in values_pools(values) if p["name"] == pools[target])["minReplicas"]
        if so["spec"].get("minReplicaCount", 0) != want_min:
            problem(f"{name}: minReplicaCount is not the pool's minReplicas ({want_min})")
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            if trigger["type"] == "metrics-api":
                url = urllib.parse.urlsplit(meta["url"])
                want_path = f"/scaling/{pools[target]}"
                if (url.hostname, url.port, url.path) != (host, svc_http["port"], want_path):
                    problem(f"{name}: polls {meta['url']}, want http://{host}:{svc_http['port']}{want_path}")
                if meta.get("valueLocation") != "desired_workers":
                    problem(f"{name}: valueLocation {meta.get('valueLocation')!r}")
                if trigger.get("metricType") != "AverageValue" or meta.get("targetValue") != "1":
                    problem(f"{name}: must be AverageValue with targetValue 1 to run desired_workers workers")
                if "activationTargetValue" not in meta:
                    problem(f"{name}: no activation threshold")
            elif trigger["type"] == "prometheus":
                if f'pool="{pools[target]}"' not in meta["query"]:
                    problem(f"{name}: Prometheus query does not select pool {pools[target]}")
            else:
                problem(f"{name}: unexpected trigger {trigger['type']}")
    pdbs = {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")}
    if coord["metadata"]["name"] not in pdbs:
        problem("no PodDisruptionBudget for the coordinator")


def values_pools(values: dict) -> list[dict]:
    if "pools" in values:
        return values["pools"]
    return yaml.safe_load((CHART / "values.yaml").read_text())["pools"]


def validate(label: str, values: dict | None) -> list[dict]:
    print(f"== {label}")
    lint = helm_python.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                            kube_version=f"v{KUBE_VERSION}")
    for m in lint.get("messages", []):
        if m.get("severity", 0) >= 2:
            problem(f"helm lint: {m.get('path')}: {m.get('error')}")
    for e in lint.get("errors", []) or []:
        problem(f"helm lint: {e}")
    docs = render(values)
    keda_docs = []
    for doc in docs:
        source = doc.pop("_source")
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            keda_docs.append(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            print(f"  ok   {name} ({source})")
        except kubernetes_validate.ValidationError as err:
            path = "/".join(str(p) for p in err.path)
            problem(f"{name} ({source}): {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problem(f"{name} ({source}): no schema: {err}")
    if keda_docs:
        run = subprocess.run(
            ["node", str(HERE / "keda" / "validate-keda.mjs")],
            input=json.dumps(keda_docs), capture_output=True, text=True, cwd=HERE / "keda",
        )
        for line in run.stdout.splitlines():
            print(f"  {'ok  ' if run.returncode == 0 else '    '} {line}")
        if run.returncode != 0:
            problem(f"KEDA schema validation failed: {run.stderr.strip() or 'see above'}")
    check_wiring(docs, values or {})
    return docs


def check_images() -> None:
    """Every image the chart's values name is built by a Dockerfile in deploy/."""
    print("== images")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    repos = {values["image"]["coordinator"], values["image"]["worker"]}
    for path in HERE.glob("values-*.yaml"):
        for pool in (yaml.safe_load(path.read_text()) or {}).get("pools", []):
            if pool.get("image"):
                repos.add(pool["image"])
    for repo in sorted(repos):
        dockerfile = HERE.parent / f"Dockerfile.{repo.removeprefix('sdfarm-')}"
        if dockerfile.exists():
            print(f"  ok   {repo} <- deploy/{dockerfile.name}")
        else:
            problem(f"image {repo} has no deploy/{dockerfile.name}")
    cuda = (HERE.parent / "Dockerfile.worker-cuda").read_text()
    if "--features cuda" not in cuda:
        problem("Dockerfile.worker-cuda does not build with --features cuda")


def must_refuse(label: str, values: dict, fragment: str) -> None:
    print(f"== refuses {label}")
    try:
        render(values)
    except Exception as err:  # the SDK raises HelmRenderError for `fail`
        if fragment in str(err):
            print(f"  ok   refused: {fragment}")
            return
        problem(f"{label}: refused for another reason: {err}")
        return
    problem(f"{label}: rendered, but the chart must refuse it")


def main() -> int:
    check_images()
    validate("defaults", None)
    for path in sorted(HERE.glob("values-*.yaml")):
        validate(path.name, yaml.safe_load(path.read_text()))
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    one = copy.deepcopy(base)
    one["coordinator"]["replicas"] = 1
    must_refuse("coordinator.replicas=1", one, "at least 2")
    bad = copy.deepcopy(base)
    bad["pools"][0]["name"] = "A100_80GB"
    must_refuse("pool name A100_80GB", bad, "pool name")
    if problems:
        print(f"\n{len(problems)} problem(s) in the chart")
        return 1
    print("\nchart renders and validates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
