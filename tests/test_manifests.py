"""What the container hosts read, in ``deploy/``: parsed, and checked against the app.

Every manifest must send traffic to the port the image listens on (the
Dockerfile's ``PORT``), probe readiness on ``/readyz`` (the model warm) and
liveness on ``/healthz`` (answered even while draining), and give the memory
the image was proven to hold the hostile burst in (``tests/test_container.py``).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from classifier.assets import ROOT
from service.server import ALWAYS_ANSWERED, CLOSE_TIMEOUT, DRAIN_TIMEOUT
from tests.support.container import MEMORY_LIMIT_MB, image_port

DEPLOY = ROOT / "deploy"
READINESS = "/readyz"
LIVENESS = "/healthz"


def documents(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def kubernetes() -> dict[str, dict[str, Any]]:
    """Each Kubernetes object in deploy/kubernetes/, by its kind."""
    objects = [doc for path in sorted(DEPLOY.glob("kubernetes/*.yaml")) for doc in documents(path)]
    return {doc["kind"]: doc for doc in objects}


def only_container(spec: dict[str, Any]) -> dict[str, Any]:
    (web,) = spec["containers"]
    return web


def test_liveness_is_what_a_draining_server_still_answers() -> None:
    assert LIVENESS in ALWAYS_ANSWERED  # a drain must not get the pod killed
    assert READINESS not in ALWAYS_ANSWERED  # a draining pod leaves the Service


def test_the_deployment_probes_and_limits_agree_with_the_app(
    kubernetes: dict[str, dict[str, Any]],
) -> None:
    deployment = kubernetes["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    web = only_container(pod)
    (port,) = web["ports"]
    assert port["containerPort"] == image_port()
    assert {"name": "PORT", "value": str(image_port())} in web["env"]
    assert web["readinessProbe"]["httpGet"] == {"path": READINESS, "port": port["name"]}
    assert web["livenessProbe"]["httpGet"] == {"path": LIVENESS, "port": port["name"]}
    # Liveness must not kill a pod still warming up: Heroku's 60 s boot timeout.
    assert web["livenessProbe"]["initialDelaySeconds"] >= 60
    assert web["resources"]["limits"]["memory"] == f"{MEMORY_LIMIT_MB}Mi"
    assert mebibytes(web["resources"]["requests"]["memory"]) <= MEMORY_LIMIT_MB
    assert pod["terminationGracePeriodSeconds"] >= DRAIN_TIMEOUT + CLOSE_TIMEOUT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert web["image"] == "IMAGE"


def mebibytes(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity.removesuffix("Mi"))


def test_the_service_pins_a_browser_to_one_pod(kubernetes: dict[str, dict[str, Any]]) -> None:
    """The page's upload, call and result stream must reach the same process."""
    service, deployment = kubernetes["Service"], kubernetes["Deployment"]
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    (port,) = service["spec"]["ports"]
    container_port = only_container(deployment["spec"]["template"]["spec"])["ports"][0]
    assert port["targetPort"] == container_port["name"]


def test_the_autoscaler_scales_the_deployment(kubernetes: dict[str, dict[str, Any]]) -> None:
    autoscaler, deployment = kubernetes["HorizontalPodAutoscaler"], kubernetes["Deployment"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert target["apiVersion"] == deployment["apiVersion"]
    assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    assert deployment["spec"]["replicas"] >= autoscaler["spec"]["minReplicas"]


def test_cloud_run_sends_its_port_and_probes_the_app() -> None:
    (service,) = documents(DEPLOY / "cloudrun.yaml")
    assert service["apiVersion"] == "serving.knative.dev/v1"
    template = service["spec"]["template"]
    web = only_container(template["spec"])
    assert web["ports"][0]["containerPort"] == image_port()  # Cloud Run sets PORT to it
    assert web["startupProbe"]["httpGet"]["path"] == READINESS
    assert web["livenessProbe"]["httpGet"]["path"] == LIVENESS
    assert web["resources"]["limits"]["memory"] == f"{MEMORY_LIMIT_MB}Mi"
    assert template["metadata"]["annotations"]["run.googleapis.com/sessionAffinity"] == "true"


def test_fly_sends_traffic_to_the_images_port() -> None:
    fly = tomllib.loads((DEPLOY / "fly.toml").read_text())
    assert fly["http_service"]["internal_port"] == image_port()
    assert fly["env"]["PORT"] == str(image_port())
    (check,) = fly["http_service"]["checks"]
    assert check["path"] == READINESS
    (vm,) = fly["vm"]
    assert vm["memory"] == f"{MEMORY_LIMIT_MB}mb"


def test_render_builds_the_dockerfile_and_checks_readiness() -> None:
    (service,) = yaml.safe_load((DEPLOY / "render.yaml").read_text())["services"]
    assert service["runtime"] == "docker"
    assert (ROOT / service["dockerfilePath"]).is_file()
    assert service["healthCheckPath"] == READINESS
    assert {"key": "PORT", "value": str(image_port())} in service["envVars"]
    assert service["plan"] == "starter"  # Render's 512 MB instance


BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "a wrong port": lambda web: web["ports"][0].update(containerPort=7860),
    "a limit below the proven one": lambda web: web["resources"]["limits"].update(memory="256Mi"),
    "liveness on readiness": lambda web: web["livenessProbe"]["httpGet"].update(path=READINESS),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_checks_catch_a_broken_deployment(
    kubernetes: dict[str, dict[str, Any]], breakage: str
) -> None:
    """Shown failing on a broken copy before being trusted on the real one."""
    deployment = copy.deepcopy(kubernetes["Deployment"])
    BREAKAGES[breakage](only_container(deployment["spec"]["template"]["spec"]))
    with pytest.raises(AssertionError):
        test_the_deployment_probes_and_limits_agree_with_the_app(
            {**kubernetes, "Deployment": deployment}
        )
