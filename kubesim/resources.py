"""The resource types the simulated API server serves, and the defaults it fills in."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives in the URL space and what its objects are called."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_name(self) -> str:
        """The name used in error messages, e.g. `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", namespaced=False)
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", has_status=False)
SECRETS = ResourceType("", "v1", "secrets", "Secret", has_status=False)
SERVICES = ResourceType("", "v1", "services", "Service")
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment")
REPLICASETS = ResourceType("apps", "v1", "replicasets", "ReplicaSet")
INGRESSES = ResourceType("networking.k8s.io", "v1", "ingresses", "Ingress")
# Stored and served, with no behaviour behind them: overlays may render these.
SERVICE_ACCOUNTS = ResourceType("", "v1", "serviceaccounts", "ServiceAccount", has_status=False)
POD_DISRUPTION_BUDGETS = ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
HORIZONTAL_POD_AUTOSCALERS = ResourceType(
    "autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"
)

RESOURCE_TYPES = (
    NAMESPACES,
    CONFIGMAPS,
    SECRETS,
    SERVICES,
    SERVICE_ACCOUNTS,
    DEPLOYMENTS,
    REPLICASETS,
    INGRESSES,
    POD_DISRUPTION_BUDGETS,
    HORIZONTAL_POD_AUTOSCALERS,
)


def find_resource_type(group: str, version: str, plural: str) -> ResourceType | None:
    return next(
        (
            rt
            for rt in RESOURCE_TYPES
            if (rt.group, rt.version, rt.plural) == (group, version, plural)
        ),
        None,
    )


def group_versions() -> dict[str, list[ResourceType]]:
    """Resource types by API group ("" is the core group), for the discovery documents."""
    groups: dict[str, list[ResourceType]] = {}
    for rt in RESOURCE_TYPES:
        groups.setdefault(rt.group, []).append(rt)
    return groups


def apply_defaults(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Fill in the defaults a real API server adds, so that equal inputs compare equal.

    Only the defaults the workers read (or that make a no-op write look like one) are
    filled in; pod template defaults such as imagePullPolicy are not.
    """
    spec = obj.setdefault("spec", {}) if rt in (DEPLOYMENTS, REPLICASETS, SERVICES) else None
    if rt is DEPLOYMENTS and spec is not None:
        spec.setdefault("replicas", 1)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault(
            "strategy",
            {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
        )
    elif rt is REPLICASETS and spec is not None:
        spec.setdefault("replicas", 1)
    elif rt is SERVICES and spec is not None:
        spec.setdefault("type", "ClusterIP")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif rt is SECRETS:
        obj.setdefault("type", "Opaque")
        # Like the real server, stringData is write-only: it is folded into data.
        for key, value in (obj.pop("stringData", None) or {}).items():
            obj.setdefault("data", {})[key] = base64.b64encode(value.encode()).decode()
    elif rt is NAMESPACES:
        obj["status"] = {"phase": "Active"}
