#!/usr/bin/env python3
"""Checks rendered kiln chart manifests (the output of deploy/helm/render): every document is
YAML with apiVersion/kind/metadata.name; core kinds against Kubernetes' JSON schemas (the PyPI
package kubernetes-validate, offline, strict: unknown fields are errors) for the chart's oldest
supported version and the newest bundled one; KEDA's ScaledObject and prometheus-operator's
ServiceMonitor (no schemas bundled): their metadata and the ScaledObject's HPA behavior against
the core schemas, every other field against the CRDs' field names (a misspelt field is an
error, as the API server's strict field validation makes it) and the fields those operators
require; and the chart's own promises that no schema can see: selectors match, named ports,
volumes and Secrets referenced exist, the startup probe tolerates long loads, the grace period
outlasts the drain, the download init container names a model.

Usage: validate.py [--existing NAME]... FILE.yaml   (NAME: a PVC or Secret the values say
already exists in the cluster)
"""
import argparse
import re
import sys

import yaml
import kubernetes_validate

# The chart's kubeVersion floor (Chart.yaml) and the newest schemas the package bundles.
K8S_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
CORE = {("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ServiceAccount"),
        ("v1", "Secret"), ("v1", "PersistentVolumeClaim")}
# 20 minutes: a cold start may download SD 1.5 (~2.1 GB) and load it before the first ready.
MIN_STARTUP_SECS = 20 * 60

# Field names of the CRDs' parts the chart may render (KEDA 2.x ScaledObject,
# prometheus-operator monitoring.coreos.com/v1 ServiceMonitor); None: a free-form map.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef": {"name", "apiVersion", "kind", "envSourceContainerName"},
    "pollingInterval": None, "cooldownPeriod": None, "initialCooldownPeriod": None,
    "idleReplicaCount": None, "minReplicaCount": None, "maxReplicaCount": None,
    "fallback": {"failureThreshold", "replicas", "behavior"},
    "advanced": {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig",
                 "scalingModifiers"},
    "triggers": None,
}
HPA_CONFIG = {"name", "behavior"}
TRIGGER = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
SERVICE_MONITOR_SPEC = {
    "jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector", "selectorMechanism",
    "namespaceSelector", "sampleLimit", "scrapeProtocols", "fallbackScrapeProtocol",
    "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "scrapeClassicHistograms", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "convertClassicHistogramsToNHCB", "keepDroppedTargets", "attachMetadata", "scrapeClass",
    "bodySizeLimit", "serviceDiscoveryRole",
}
ENDPOINT = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings",
    "proxyUrl", "noProxy", "proxyFromEnvironment", "proxyConnectHeader", "followRedirects",
    "enableHttp2", "filterRunning",
}
# prometheus-operator's Duration pattern (its CRD rejects anything else).
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                      r"(([0-9]+)s)?(([0-9]+)ms)?)$")
DURATION_UNITS = [("ms", 0.001), ("y", 365 * 86400), ("w", 7 * 86400), ("d", 86400),
                  ("h", 3600), ("m", 60), ("s", 1)]

errors = []


def fail(doc, msg):
    errors.append(f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}: {msg}")


def subset(small, big):
    return all(big.get(k) == v for k, v in (small or {}).items())


def unknown_fields(doc, where, obj, allowed):
    """Fields of obj (a map) not in allowed: what a CRD's structural schema rejects."""
    if not isinstance(obj, dict):
        fail(doc, f"{where} must be a map, got {type(obj).__name__}")
        return
    for k in obj:
        if k not in allowed:
            fail(doc, f"unknown field {where}.{k}")


def core_schema(doc, what, synthetic):
    """Validates a part of a custom resource that is a core type, inside a synthetic core object."""
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(synthetic, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(doc, f"{what}, Kubernetes {v} schema: {e.message} at {'.'.join(map(str, e.path))}")


def seconds(duration):
    total, rest = 0.0, duration
    for unit, factor in DURATION_UNITS:
        m = re.match(rf"^([0-9]+){unit}", rest)
        if m:
            total += int(m.group(1)) * factor
            rest = rest[m.end():]
    return total


def custom_resource(doc, api_version, spec_fields):
    """The checks every custom resource gets: its apiVersion, its metadata against the core
    ObjectMeta schema (borrowed from a ConfigMap), and no unknown field in its spec. Returns
    the spec."""
    if doc.get("apiVersion") != api_version:
        fail(doc, f"apiVersion {doc.get('apiVersion')} is not {api_version}")
    spec = doc.get("spec") or {}
    core_schema(doc, "metadata", {"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": doc["metadata"]})
    unknown_fields(doc, "spec", spec, spec_fields)
    return spec


def check_scaled_object(doc, deployments):
    spec = custom_resource(doc, "keda.sh/v1alpha1", SCALED_OBJECT_SPEC)
    for k, allowed in SCALED_OBJECT_SPEC.items():
        if allowed and k in spec:
            unknown_fields(doc, f"spec.{k}", spec[k], allowed)
    hpa = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig")
    if hpa is not None:
        unknown_fields(doc, "spec.advanced.horizontalPodAutoscalerConfig", hpa, HPA_CONFIG)
        if isinstance(hpa, dict) and "behavior" in hpa:
            # The HPA's own behavior type: KEDA copies it into the HPA it creates.
            core_schema(doc, "spec.advanced.horizontalPodAutoscalerConfig.behavior", {
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "behavior-check"},
                "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"},
                         "maxReplicas": 1, "behavior": hpa["behavior"]}})
    target = (spec.get("scaleTargetRef") or {}).get("name")
    if target not in deployments:
        fail(doc, f"scaleTargetRef.name {target!r} is not a rendered Deployment")
    elif "replicas" in deployments[target].get("spec", {}):
        fail(doc, "the Deployment sets replicas, which would fight KEDA on every upgrade")
    lo, hi = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1):
        fail(doc, f"min/maxReplicaCount {lo}/{hi} must be integers with 0 <= min <= max, max >= 1")
    for key in ("pollingInterval", "cooldownPeriod"):
        if key in spec and not isinstance(spec[key], int):
            fail(doc, f"{key} must be an integer")
    triggers = spec.get("triggers") or []
    if not triggers:
        fail(doc, "no triggers")
    for i, t in enumerate(triggers):
        unknown_fields(doc, f"spec.triggers[{i}]", t, TRIGGER)
        meta = t.get("metadata") or {}
        if not isinstance(t.get("type"), str):
            fail(doc, "trigger without a type")
        # KEDA's trigger metadata is map[string]string: a bare number is rejected by the CRD.
        for k, v in meta.items():
            if not isinstance(v, str):
                fail(doc, f"trigger metadata {k} is {type(v).__name__}, must be a string")
        if t.get("type") == "prometheus":
            for k in ("serverAddress", "query", "threshold"):
                if not meta.get(k):
                    fail(doc, f"prometheus trigger needs metadata.{k}")
            try:
                if float(meta.get("threshold", "0")) <= 0:
                    fail(doc, "threshold must be > 0")
                float(meta.get("activationThreshold", "0"))
            except ValueError:
                fail(doc, "threshold/activationThreshold must be numbers")
            if "kiln_queue_waiting" not in meta.get("query", ""):
                fail(doc, "the query does not use kiln_queue_waiting")
            if not meta.get("serverAddress", "").startswith(("http://", "https://")):
                fail(doc, "serverAddress must be an http(s) URL")


def check_service_monitor(doc, services):
    spec = custom_resource(doc, "monitoring.coreos.com/v1", SERVICE_MONITOR_SPEC)
    match = (spec.get("selector") or {}).get("matchLabels")
    if not match:
        fail(doc, "spec.selector.matchLabels is required")
    selected = [s for s in services.values() if subset(match, s["metadata"].get("labels"))]
    if not selected:
        fail(doc, "its selector matches no rendered Service")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        fail(doc, "spec.endpoints is required")
    for i, ep in enumerate(endpoints):
        unknown_fields(doc, f"spec.endpoints[{i}]", ep, ENDPOINT)
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not (isinstance(ep[key], str) and DURATION.match(ep[key])):
                fail(doc, f"endpoint {key} {ep[key]!r} is not a Prometheus duration")
        if all(isinstance(ep.get(k), str) and DURATION.match(ep[k])
               for k in ("interval", "scrapeTimeout")) \
                and seconds(ep["scrapeTimeout"]) > seconds(ep["interval"]):
            fail(doc, "endpoint scrapeTimeout is longer than its interval (Prometheus refuses it)")
        ports = {p.get("name") for s in selected for p in s["spec"].get("ports", [])}
        if ep.get("port") not in ports:
            fail(doc, f"endpoint port {ep.get('port')!r} is not a port name of the Service")
        if ep.get("path") != "/metrics":
            fail(doc, f"endpoint path {ep.get('path')!r} is not /metrics")


def check_deployment(doc, claims, secrets, services):
    spec = doc["spec"]
    pod = spec["template"]
    labels = pod["metadata"].get("labels") or {}
    if not subset(spec["selector"].get("matchLabels"), labels):
        fail(doc, "selector.matchLabels do not match the pod labels")
    if not any(subset(s["spec"].get("selector"), labels) for s in services.values()):
        fail(doc, "no Service selects its pods")
    pod_ports = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    for s in services.values():
        if not subset(s["spec"].get("selector"), labels):
            continue
        for p in s["spec"].get("ports", []):
            target = p.get("targetPort", p.get("port"))
            if isinstance(target, str) and target not in {q.get("name") for q in pod_ports}:
                fail(s, f"targetPort {target!r} is not a named port of the pods it selects")
            elif isinstance(target, int) and target not in {q.get("containerPort") for q in pod_ports}:
                fail(s, f"targetPort {target} is not a containerPort of the pods it selects")
    pspec = pod["spec"]
    volumes = {v["name"]: v for v in pspec.get("volumes", [])}
    for v in volumes.values():
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and claim not in claims:
            fail(doc, f"volume {v['name']} uses PVC {claim!r}, neither rendered nor --existing")
    containers = pspec.get("initContainers", []) + pspec["containers"]
    for c in pspec.get("initContainers", []):
        args = c.get("args") or []
        if args[:1] == ["download"] and (len(args) < 2 or str(args[1]).startswith("-")):
            fail(doc, f"init container {c['name']} runs `kiln download` without a model id")
    for c in containers:
        port_names = {p.get("name") for p in c.get("ports", [])}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in port_names:
                fail(doc, f"container {c['name']} {probe} uses port {port!r}, not a port it names")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                fail(doc, f"container {c['name']} mounts undefined volume {m['name']}")
        names = [e["name"] for e in c.get("env", [])]
        if len(names) != len(set(names)):
            fail(doc, f"container {c['name']} sets an env variable twice")
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] not in secrets:
                fail(doc, f"env {e['name']} reads Secret {ref['name']!r}, neither rendered nor --existing")
            elif ref and isinstance(secrets[ref["name"]], dict) and ref["key"] not in secrets[ref["name"]]:
                fail(doc, f"env {e['name']} reads key {ref['key']!r} that Secret {ref['name']} lacks")
    main = next((c for c in pspec["containers"] if c["name"] == "kiln"), None)
    if main is None:
        fail(doc, "no container named kiln")
        return
    env = {e["name"]: e.get("value") for e in main.get("env", [])}
    if env.get("KILN_HOST") != "0.0.0.0":
        fail(doc, "KILN_HOST must be 0.0.0.0 in a pod")
    if env.get("KILN_PRELOAD") != "true":
        fail(doc, "KILN_PRELOAD must be true (ready = loaded)")
    paths = {}
    for probe, want in (("startupProbe", "/health/ready"), ("livenessProbe", "/health/live"),
                        ("readinessProbe", "/health/ready")):
        p = main.get(probe)
        if not p:
            fail(doc, f"{probe} missing")
            continue
        paths[probe] = p
        if p.get("httpGet", {}).get("path") != want:
            fail(doc, f"{probe} should GET {want}")
    start = paths.get("startupProbe")
    if start:
        secs = start.get("failureThreshold", 3) * start.get("periodSeconds", 10)
        if secs < MIN_STARTUP_SECS:
            fail(doc, f"startupProbe gives up after {secs} s, under {MIN_STARTUP_SECS} s")
    grace = pspec.get("terminationGracePeriodSeconds", 30)
    drain = int(env.get("KILN_SHUTDOWN_GRACE_SECS") or 60)
    args = [str(a) for a in main.get("args", [])]
    for i, a in enumerate(args):  # a flag wins over the variable
        if a == "--shutdown-grace-secs" and i + 1 < len(args):
            drain = int(args[i + 1])
        elif a.startswith("--shutdown-grace-secs="):
            drain = int(a.split("=", 1)[1])
    pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    if grace <= drain + sleep:
        fail(doc, f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep} s + drain {drain} s")
    if env.get("KILN_LOG_FORMAT", "text") not in ("text", "json"):
        fail(doc, f"KILN_LOG_FORMAT {env['KILN_LOG_FORMAT']!r} is not text or json")
    mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
    if env.get("KILN_MODELS_DIR") not in mounts:
        fail(doc, f"KILN_MODELS_DIR {env.get('KILN_MODELS_DIR')!r} is not a mounted volume")
    store = env.get("KILN_IMAGE_STORE") or "memory"
    if store.startswith("dir:"):
        # Links from one replica are served by every replica only on one shared volume.
        vol = volumes.get(mounts.get(store[4:]), {})
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is None:
            fail(doc, f"KILN_IMAGE_STORE {store}: not a PersistentVolumeClaim mounted there")
        elif isinstance(claims.get(claim), dict) and "ReadWriteMany" not in claims[claim].get("accessModes", []):
            fail(doc, f"KILN_IMAGE_STORE {store}: PVC {claim} is not ReadWriteMany")
    elif store != "memory":
        fail(doc, f"KILN_IMAGE_STORE {store!r} is not memory or dir:PATH")
    limits = (main.get("resources") or {}).get("limits") or {}
    if "nvidia.com/gpu" in limits and env.get("KILN_DEVICE", "cpu").startswith("cpu"):
        fail(doc, "requests nvidia.com/gpu but KILN_DEVICE is cpu")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--existing", action="append", default=[])
    ap.add_argument("file")
    args = ap.parse_args()
    with open(args.file) as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            sys.exit(f"{args.file}: FAILED, not valid YAML: {e}")
    if not docs:
        sys.exit(f"{args.file}: no documents")
    by_kind = {}
    for d in docs:
        if not isinstance(d, dict) or not all(k in d for k in ("apiVersion", "kind", "metadata")):
            sys.exit(f"{args.file}: a document without apiVersion/kind/metadata: {d!r:.200}")
        if not d["metadata"].get("name"):
            fail(d, "metadata.name is empty")
        key = (d["kind"], d["metadata"]["name"])
        if key in by_kind:
            fail(d, "rendered twice")
        by_kind[key] = d
        if (d["apiVersion"], d["kind"]) in CORE:
            for v in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(d, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(d, f"Kubernetes {v} schema: {e.message} at {'.'.join(map(str, e.path))}")
        elif d["kind"] not in ("ScaledObject", "ServiceMonitor"):
            fail(d, f"unexpected kind {d['apiVersion']}/{d['kind']}: add a check for it")

    def named(kind):
        return {n: d for (k, n), d in by_kind.items() if k == kind}

    deployments, services = named("Deployment"), named("Service")
    # Rendered PVCs by name with their spec; --existing ones as True (spec unknown).
    claims = {n: d.get("spec") or {} for n, d in named("PersistentVolumeClaim").items()}
    claims.update({n: True for n in args.existing if n not in claims})
    secrets = {n: d.get("stringData") or d.get("data") or {} for n, d in named("Secret").items()}
    secrets.update({n: True for n in args.existing})
    if len(deployments) != 1:
        errors.append(f"expected one Deployment, got {len(deployments)}")
    for d in deployments.values():
        check_deployment(d, claims, secrets, services)
    for d in named("ScaledObject").values():
        check_scaled_object(d, deployments)
    for d in named("ServiceMonitor").values():
        check_service_monitor(d, services)
    kinds = sorted(f"{k}/{n}" for k, n in by_kind)
    if errors:
        print(f"{args.file}: FAILED", *errors, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"{args.file}: ok ({', '.join(kinds)}; schemas {', '.join(K8S_VERSIONS)})")


if __name__ == "__main__":
    main()
