"""Kubeconfigs that send a client under test through the proxy: plain HTTP to 127.0.0.1, a bearer token user."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def kubeconfig(url: str, token: str, *, namespace: str = "default", name: str = "api-proxy") -> dict[str, Any]:
    """A kubeconfig with one cluster (the proxy at `url`), one user authenticating with `token`, one context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": f"{name}-user", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-user", "namespace": namespace}}],
        "current-context": name,
    }


def write_kubeconfig(path: str | Path, url: str, token: str, *, namespace: str = "default") -> Path:
    """Write `kubeconfig(url, token)` to `path`, readable by its owner only (it holds a credential)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(yaml.safe_dump(kubeconfig(url, token, namespace=namespace)))
    # O_CREAT's mode applies only to a new file; an existing one may have been readable by others.
    target.chmod(0o600)
    return target
