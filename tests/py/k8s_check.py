#!/usr/bin/env python3
"""Check the Kubernetes manifests of packaging/kubernetes/ (run by tests/tests/packaging.rs).

1. Every document validates against the Kubernetes API's OpenAPI schemas, strictly (no
   unknown fields), for each --k8s version (package kubernetes-validate, pinned in
   requirements-k8s.txt).
2. What the schemas cannot see: names that refer to each other (namespace, ServiceAccount,
   ConfigMap, volumes, named ports), the DaemonSet selector against its pod labels, the
   metrics port in the arguments, the annotations and the probes, the policy in the
   ConfigMap against packaging/policy.toml, and no privileged container.

Prints one JSON object on stdout: {"ok": bool, "problems": [...], "validated": [...],
"daemonset": {...}} (the DaemonSet as parsed, for the container test); exit 0 when ok.
"""

import argparse
import glob
import json
import os
import sys

import kubernetes_validate
import yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--policy", required=True)
    ap.add_argument("--k8s", action="append", required=True)
    args = ap.parse_args()

    problems = []
    validated = []
    docs = []
    files = sorted(glob.glob(os.path.join(args.dir, "*.yaml")))
    if not files:
        problems.append(f"no *.yaml files in {args.dir}")
    for f in files:
        with open(f) as fh:
            for doc in yaml.safe_load_all(fh):
                if doc is None:
                    continue
                docs.append((os.path.basename(f), doc))
                for v in args.k8s:
                    try:
                        kubernetes_validate.validate(doc, v, strict=True)
                        validated.append(f"{os.path.basename(f)} {doc['kind']}/{doc['metadata']['name']} @ {v}")
                    except Exception as e:  # ValidationError, SchemaNotFoundError, ...
                        msg = getattr(e, "message", None) or str(e)
                        path = ".".join(str(p) for p in getattr(e, "path", []) or [])
                        problems.append(f"{f}: {doc.get('kind')} against {v}: {path}: {msg}")

    def objects(kind):
        return [d for _, d in docs if d.get("kind") == kind]

    namespaces = {d["metadata"]["name"] for d in objects("Namespace")}
    for fname, d in docs:
        if d["kind"] != "Namespace":
            ns = d["metadata"].get("namespace")
            if ns not in namespaces:
                problems.append(f"{fname}: {d['kind']}/{d['metadata']['name']} is in namespace {ns!r}, not one of the manifests' namespaces {sorted(namespaces)}")
    for n in objects("Namespace"):
        if n["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "privileged":
            problems.append("the namespace must allow privileged pods (hostNetwork, hostPID, hostPath)")

    ds_list = objects("DaemonSet")
    if len(ds_list) != 1:
        problems.append(f"expected one DaemonSet, found {len(ds_list)}")
        print(json.dumps({"ok": False, "problems": problems, "validated": validated}))
        return 1
    ds = ds_list[0]
    tmpl = ds["spec"]["template"]
    pod = tmpl["spec"]
    labels = tmpl["metadata"].get("labels", {})
    for k, v in ds["spec"]["selector"].get("matchLabels", {}).items():
        if labels.get(k) != v:
            problems.append(f"selector {k}={v} does not match the pod labels {labels}")

    sas = {d["metadata"]["name"] for d in objects("ServiceAccount")}
    if pod.get("serviceAccountName") not in sas:
        problems.append(f"serviceAccountName {pod.get('serviceAccountName')!r} is none of {sorted(sas)}")
    cms = {d["metadata"]["name"]: d for d in objects("ConfigMap")}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and v["configMap"]["name"] not in cms:
            problems.append(f"volume {v['name']} names ConfigMap {v['configMap']['name']!r}, not in the manifests")
    if not pod.get("hostPID") or not pod.get("hostNetwork"):
        problems.append("the agent needs hostPID and hostNetwork (see the comments)")

    if len(pod["containers"]) != 1:
        problems.append("expected one container")
    c = pod["containers"][0]
    used = set()
    for m in c.get("volumeMounts", []):
        used.add(m["name"])
        if m["name"] not in volumes:
            problems.append(f"volumeMount {m['name']} has no volume")
    for name in volumes:
        if name not in used:
            problems.append(f"volume {name} is never mounted")

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = c.get(probe)
        if not p:
            problems.append(f"no {probe}")
            continue
        port = p.get("httpGet", {}).get("port")
        if isinstance(port, str) and port not in ports:
            problems.append(f"{probe} uses port {port!r}, not a named port of the container {sorted(ports)}")
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
        problems.append("livenessProbe must GET /healthz")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
        problems.append("readinessProbe must GET /readyz")
    ann = tmpl["metadata"].get("annotations", {})
    metrics_port = ports.get("metrics")
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(metrics_port):
        problems.append(f"prometheus.io annotations {ann} do not point at the metrics port {metrics_port}")
    a = c.get("args", [])
    if "--metrics-addr" in a:
        addr = a[a.index("--metrics-addr") + 1]
        if not addr.endswith(f":{metrics_port}"):
            problems.append(f"--metrics-addr {addr} is not on the metrics containerPort {metrics_port}")
    else:
        problems.append("the agent is started without --metrics-addr")
    if "--policy" in a:
        pol = a[a.index("--policy") + 1]
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        d, f = os.path.split(pol)
        vol = volumes.get(mounts.get(d, ""), {})
        cm = cms.get(vol.get("configMap", {}).get("name", ""))
        if cm is None or f not in cm.get("data", {}):
            problems.append(f"--policy {pol} is not a key of a mounted ConfigMap")
        else:
            with open(args.policy) as fh:
                want = fh.read()
            if cm["data"][f] != want:
                problems.append(f"ConfigMap {cm['metadata']['name']} key {f} differs from {args.policy}")

    sc = c.get("securityContext", {})
    if sc.get("privileged"):
        problems.append("the container must not be privileged")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities must drop ALL and add back only what is needed")
    for r in ("requests", "limits"):
        if "memory" not in c.get("resources", {}).get(r, {}):
            problems.append(f"no memory {r}")

    out = {"ok": not problems, "problems": problems, "validated": validated, "daemonset": ds}
    print(json.dumps(out))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
