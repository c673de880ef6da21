"""The discovery documents (/version, /api, /apis, ...) that clients read before they act."""

from __future__ import annotations

from typing import Any

from kubesim.resources import RESOURCE_TYPES, ResourceType, group_versions

KUBERNETES_VERSION = {"major": "1", "minor": "31"}

_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def version_info() -> dict[str, Any]:
    return {
        **KUBERNETES_VERSION,
        "gitVersion": f"v{KUBERNETES_VERSION['major']}.{KUBERNETES_VERSION['minor']}.0-kubesim",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2024-01-01T00:00:00Z",
        "goVersion": "go1.22",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def core_versions(address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group(name: str, version: str) -> dict[str, Any]:
    group_version = {"groupVersion": f"{name}/{version}", "version": version}
    return {"name": name, "versions": [group_version], "preferredVersion": group_version}


def api_group(name: str) -> dict[str, Any] | None:
    types = group_versions().get(name)
    if not name or not types:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, types[0].version)}


def api_group_list() -> dict[str, Any]:
    groups = [_group(name, types[0].version) for name, types in group_versions().items() if name]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _resource_entries(rt: ResourceType) -> list[dict[str, Any]]:
    entry = {
        "name": rt.plural,
        "singularName": rt.kind.lower(),
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": _VERBS,
    }
    if not rt.has_status:
        return [entry]
    status = {**entry, "name": f"{rt.plural}/status", "verbs": ["get", "patch", "update"]}
    return [entry, status]


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    types = [rt for rt in RESOURCE_TYPES if (rt.group, rt.version) == (group, version)]
    if not types:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": types[0].api_version,
        "resources": [entry for rt in types for entry in _resource_entries(rt)],
    }


def discovery_document(path: str, address: str) -> dict[str, Any] | None:
    """The discovery answer for `path`, or None when the path is not a discovery path."""
    segments = [segment for segment in path.split("/") if segment]
    match segments:
        case ["version"]:
            return version_info()
        case ["api"]:
            return core_versions(address)
        case ["apis"]:
            return api_group_list()
        case ["api", version]:
            return api_resource_list("", version)
        case ["apis", group]:
            return api_group(group)
        case ["apis", group, version]:
            return api_resource_list(group, version)
    return None
