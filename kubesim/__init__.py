"""kubesim: a Kubernetes API server, Deployment controller and application, simulated.

The test harness for monkeytown-deploy's workers, who talk to it through the real
`kubernetes` client over real HTTP. It is not part of the installed package.

    with ApiServer() as server, DeploymentController(server, mode="auto"):
        api = api_client(server.url)
        ...
"""

from kubesim.apiserver import ApiServer
from kubesim.app import MetricRule, SimApp
from kubesim.client import api_client
from kubesim.controller import DeploymentController
from kubesim.faults import Fault
from kubesim.requestlog import RequestRecord

__all__ = [
    "ApiServer",
    "DeploymentController",
    "Fault",
    "MetricRule",
    "RequestRecord",
    "SimApp",
    "api_client",
]
