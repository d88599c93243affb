"""``deploy/kubernetes/`` (issue 9 point 5): every manifest is valid against the Kubernetes JSON
schemas (``kubernetes-validate``, which carries them offline; strict: an unknown or misspelt field is
an error), and the manifests agree with each other and with the product: the probes hit routes
``ah`` serves, the container's arguments are options ``ah run`` has, the autoscaler scales the
Deployment on the gauge ``/metrics`` exports, and the grace period covers the drain."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from ah.cli.main import app
from tests.server_helpers import ROOT

K8S = ROOT / "deploy" / "kubernetes"
VERSION = "1.30.0"  # the oldest Kubernetes these manifests are written for; checked against the newest too
ACTIVE_SESSIONS_GAUGE = "ah_active_sessions"  # the gauge /metrics exports (issue 8)


def resources() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[doc["kind"]] = doc
    return found


@pytest.mark.parametrize("version", [VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    docs = resources()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(docs)
    for kind, doc in docs.items():
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError, naming the field
        assert doc["metadata"]["name"], kind


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The check above can fail: a misspelt field and a wrong type are both caught."""
    deployment = resources()["Deployment"]
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, VERSION, strict=True)


def test_the_manifests_fit_together_and_fit_ah() -> None:
    docs = resources()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]

    # The container runs `ah run` with options it has, a graph that exists, on the port it declares.
    args = container["args"]
    assert (args[0] == "run" and (ROOT / args[1]).is_file()) or args[1] == "graphs/cloud.yaml", args
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    for option in (a for a in args if a.startswith("--")):
        assert option in help_text, f"`ah run` has no option {option}"
    port = int(args[args.index("--port") + 1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == port
    assert service["spec"]["ports"][0]["targetPort"] in ("http", port)
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)

    # Readiness is /readyz (503 while draining or full), liveness /healthz.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    max_sessions = int(env["AH_MAX_SESSIONS"])
    assert max_sessions > 0

    # The grace period covers the preStop pause and the whole drain.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(args[args.index("--drain-timeout") + 1])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]

    # The autoscaler scales this Deployment on active sessions, below the admission limit.
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ah"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == ACTIVE_SESSIONS_GAUGE
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < max_sessions
    rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert any(re.match(r["name"]["matches"], ACTIVE_SESSIONS_GAUGE) for r in rules)


def test_the_readme_explains_the_figures_it_uses() -> None:
    text = (K8S / "README.md").read_text()
    for needed in ("AH_MAX_SESSIONS", ACTIVE_SESSIONS_GAUGE, "/readyz", "preStop", "experiments/capacity.py"):
        assert needed in text, needed


def test_the_autoscaling_gauge_is_on_metrics() -> None:
    """The HPA's metric exists where the Deployment's annotations say Prometheus scrapes it."""
    import asyncio

    import httpx

    from tests.server_helpers import open_conversation, serving, wait_for, ws_url

    async def main() -> None:
        async with serving() as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            ws = await open_conversation(ws_url(server.port))
            await wait_for(lambda: len(server.sessions) == 1, what="the session")
            page = (await http.get(resources()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
                                   ["prometheus.io/path"])).text  # fmt: skip
            lines = [line for line in page.splitlines() if line.startswith(ACTIVE_SESSIONS_GAUGE + " ")]
            assert lines and float(lines[0].split()[1]) == 1.0, page[:2000]
            await ws.close()

    asyncio.run(asyncio.wait_for(main(), 30))
