"""deploy/: the docker-compose file, the Kubernetes manifests and the serving config parse and agree with each
other (they cannot run here: no Docker, no cluster). The nginx config itself runs in test_replicas_nginx.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MODULES = {"mainbody_detection", "feature_extraction", "index_search", "image_recognition"}


def _check_serving_config(cfg: dict) -> None:
    from shitu.params import flatten
    from shitu.serving.gallery.milvus import parse_uri

    assert set(cfg["modules_info"]) == MODULES
    assert cfg["port"] == 8866
    for mod in cfg["modules_info"].values():
        args = mod["init_args"]
        parse_uri(args["gallery"])  # a valid milvus:// URI: the replicas keep no gallery on disk
        flatten(args.get("params") or {})  # known parameter names


def test_serving_config_names_a_milvus_gallery():
    _check_serving_config(json.loads((DEPLOY / "config.json").read_text()))


def test_docker_compose_file():
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"milvus", "shitu-1", "shitu-2", "nginx"} <= set(services)
    for name in ("shitu-1", "shitu-2"):
        svc = services[name]
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        assert svc["depends_on"]["milvus"]["condition"] == "service_healthy"
        for vol in svc["volumes"]:
            assert (DEPLOY / vol.split(":")[0]).exists(), vol
    assert "healthz" in " ".join(services["milvus"]["healthcheck"]["test"])
    conf = services["nginx"]["volumes"][0].split(":")[0]
    upstreams = re.findall(r"(?m)^\s*server (\S+):8866", (DEPLOY / conf).read_text())
    assert sorted(upstreams) == sorted(n for n in services if n.startswith("shitu-"))
    assert (DEPLOY / services["milvus"]["volumes"][0].split(":")[0]).is_file()
    assert (DEPLOY.parent / services["shitu-1"]["build"]["dockerfile"]).is_file()


def _manifests() -> list[dict]:
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                docs.append(doc)
    return docs


def test_kubernetes_manifests_are_well_formed():
    docs = _manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {
        ("Deployment", "shitu-hub"),
        ("Service", "shitu-hub"),
        ("StatefulSet", "milvus"),
        ("Service", "milvus"),
        ("Ingress", "shitu-hub"),
        ("ConfigMap", "shitu-hub-config"),
    } <= kinds
    for d in docs:
        assert isinstance(d["apiVersion"], str) and re.match(r"^[a-z][-a-z0-9]*$", d["metadata"]["name"])
        if d["kind"] in ("Deployment", "StatefulSet"):
            spec = d["spec"]
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
            for c in spec["template"]["spec"]["containers"]:
                assert c["readinessProbe"]["httpGet"]["path"] in ("/health", "/healthz")
                assert c["livenessProbe"]["httpGet"]["path"] in ("/health", "/healthz")
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                declared = {v["name"] for v in spec["template"]["spec"].get("volumes", [])}
                declared |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
                assert mounts <= declared
        if d["kind"] == "Service":
            owners = [
                x
                for x in docs
                if x["kind"] in ("Deployment", "StatefulSet")
                and d["spec"]["selector"].items() <= x["spec"]["template"]["metadata"]["labels"].items()
            ]
            assert owners, f"Service {d['metadata']['name']} selects no pods"
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    assert deploy["spec"]["replicas"] >= 2
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "shitu-hub-config")
    cfg = json.loads(cm["data"]["config.json"])
    _check_serving_config(cfg)
    milvus_svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "milvus")
    from shitu.serving.gallery.milvus import parse_uri

    target = parse_uri(cfg["modules_info"]["image_recognition"]["init_args"]["gallery"])
    assert target.host == "milvus" and target.port in [p["port"] for p in milvus_svc["spec"]["ports"]]
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "shitu-hub" and backend["port"]["number"] == 8866


@pytest.mark.parametrize("path", ["docker-compose.yml", "milvus/embedEtcd.yaml"])
def test_yaml_files_parse(path):
    assert yaml.safe_load((DEPLOY / path).read_text())
