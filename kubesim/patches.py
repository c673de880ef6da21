"""The four PATCH flavours the API server accepts, applied to plain JSON documents.

Strategic merge is approximated with a table of list merge keys instead of the Go struct
tags: lists of containers, env, volumes and similar merge by `name`, container ports by
`containerPort`, service ports by `port`; every other list is replaced. Directives such
as `$patch` and `$setElementOrder` are ignored.
"""

from __future__ import annotations

import copy
from typing import Any

#: Field name -> the key that identifies an item of that list in a strategic merge.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
}


class PatchError(ValueError):
    """A patch document is malformed or cannot apply; the API answers 422 or 400."""


def list_merge_key(field: str, items: list[Any]) -> str | None:
    """The key strategic merge uses for a list under `field`, or None to replace it."""
    if field == "ports":
        # Container ports and service ports share the field name but not the key.
        sample = next((item for item in items if isinstance(item, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return MERGE_KEYS.get(field)


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Merge `patch` into a copy of `target`; null deletes a key, keyed lists merge by item."""
    if isinstance(patch, dict) and isinstance(target, dict):
        merged = copy.deepcopy(target)
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged.get(key), value, key)
        return merged
    if isinstance(patch, list) and isinstance(target, list):
        merge_key = list_merge_key(field, patch + target)
        if merge_key:
            return _merge_keyed_list(target, patch, merge_key, field)
    return _without_directives(copy.deepcopy(patch))


def _merge_keyed_list(target: list[Any], patch: list[Any], merge_key: str, field: str) -> Any:
    merged = copy.deepcopy(target)
    positions = {item.get(merge_key): i for i, item in enumerate(merged) if isinstance(item, dict)}
    for item in patch:
        if not isinstance(item, dict) or item.get(merge_key) not in positions:
            merged.append(_without_directives(copy.deepcopy(item)))
            continue
        index = positions[item[merge_key]]
        merged[index] = strategic_merge(merged[index], item, field)
    return merged


def _without_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_without_directives(item) for item in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(document: Any, path: str) -> tuple[Any, str]:
    parts = _pointer(path)
    if not parts:
        raise PatchError("the JSON patch operation cannot target the whole document")
    node = document
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as error:
            raise PatchError(f"JSON patch path {path!r} does not exist") from error
    return node, parts[-1]


def _get(document: Any, path: str) -> Any:
    node, last = _parent(document, path)
    try:
        return node[int(last)] if isinstance(node, list) else node[last]
    except (KeyError, IndexError, ValueError) as error:
        raise PatchError(f"JSON patch path {path!r} does not exist") from error


def _add(document: Any, path: str, value: Any) -> None:
    node, last = _parent(document, path)
    if isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), value)
    else:
        node[last] = value


def _remove(document: Any, path: str) -> Any:
    value = _get(document, path)
    node, last = _parent(document, path)
    if isinstance(node, list):
        del node[int(last)]
    else:
        del node[last]
    return value


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test) to a copy."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path", "")
        if op == "add":
            _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            _remove(document, path)
        elif op == "replace":
            _remove(document, path)
            _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "move":
            _add(document, path, _remove(document, operation["from"]))
        elif op == "copy":
            _add(document, path, copy.deepcopy(_get(document, operation["from"])))
        elif op == "test":
            if _get(document, path) != operation.get("value"):
                raise PatchError(f"JSON patch test failed at {path!r}")
        else:
            raise PatchError(f"unsupported JSON patch operation {op!r}")
    return document


# A field path through dicts and keyed lists: dict keys are strings, items of a keyed
# list are (merge key, value) pairs, so the same container is the same path in two documents.
FieldPath = tuple[str | tuple[str, Any], ...]


def field_paths(document: Any, prefix: FieldPath = (), field: str = "") -> dict[FieldPath, Any]:
    """Flatten a document into leaf field paths, the unit that server-side apply owns."""
    if isinstance(document, dict) and document:
        paths: dict[FieldPath, Any] = {}
        for key, value in document.items():
            paths.update(field_paths(value, (*prefix, key), key))
        return paths
    if isinstance(document, list) and document:
        merge_key = list_merge_key(field, document)
        if merge_key and all(isinstance(item, dict) and merge_key in item for item in document):
            paths = {}
            for item in document:
                paths.update(field_paths(item, (*prefix, (merge_key, item[merge_key])), field))
            return paths
    return {prefix: document}


def remove_field(document: Any, path: FieldPath) -> None:
    """Delete the field at `path` from `document` in place, if it is there."""
    node = document
    for step in path[:-1]:
        node = _step_into(node, step)
        if node is None:
            return
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        node.pop(last, None)
    elif isinstance(node, list) and isinstance(last, tuple):
        node[:] = [item for item in node if item.get(last[0]) != last[1]]


def _step_into(node: Any, step: str | tuple[str, Any]) -> Any:
    if isinstance(step, str):
        return node.get(step) if isinstance(node, dict) else None
    if isinstance(node, list):
        key, value = step
        return next((item for item in node if item.get(key) == value), None)
    return None
