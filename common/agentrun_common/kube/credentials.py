"""Where the API server is and who to be there: from the pod's service account or a kubeconfig (the operator
also converts kopf's ``ConnectionInfo``, in ``agentrun_operator.kube``).

A token held in a file (the service account's projected token, a kubeconfig's ``tokenFile``) is read again at
every request: the kubelet rewrites it before it expires (hourly without token extension), and the API
server refuses it once expired or once the object it is bound to is deleted.
"""

import base64
import dataclasses
import datetime
import functools
import json
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Where the kubelet mounts a pod's service account credentials.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialsError(Exception):
    """No usable way to reach the API server; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How to reach the API server. ``*_data`` fields are base64, as in a kubeconfig."""

    server: str
    token: str | None = None
    token_file: Path | None = None
    scheme: str = "Bearer"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: str | None = None
    key_data: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    default_namespace: str | None = None

    def current_token(self) -> str | None:
        """The token now: the file's content when there is a file (it rotates), else the fixed one."""
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError as error:
                raise CredentialsError(f"cannot read the API token file {self.token_file}: {error.strerror}") from None
        return self.token

    def authorization(self) -> str | None:
        """The Authorization header value for the next request, or None (client certificates, plain HTTP)."""
        token = self.current_token()
        if token:
            return f"{self.scheme} {token}"
        if self.username and self.password:
            raw = f"{self.username}:{self.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        return None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The TLS settings for the server; False for a plain-HTTP server (nothing to verify)."""
        if not self.server.startswith("https"):
            return False
        context = ssl.create_default_context(
            cafile=self.ca_file or None, cadata=_decoded(self.ca_data).decode() if self.ca_data else None
        )
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_data and self.key_data:
            # The ssl module loads client certificates only from files.
            with tempfile.NamedTemporaryFile("wb") as cert, tempfile.NamedTemporaryFile("wb") as key:
                cert.write(_decoded(self.cert_data))
                key.write(_decoded(self.key_data))
                cert.flush()
                key.flush()
                context.load_cert_chain(cert.name, key.name)
        return context


def load(environ: Mapping[str, str] | None = None) -> Credentials:
    """KUBECONFIG when set (a process started outside a pod), else the pod's service account."""
    return loader(environ)()


def loader(environ: Mapping[str, str] | None = None) -> Callable[[], Credentials]:
    """What ``load`` reads, decided now and read again at each call: a rewritten kubeconfig or token file."""
    env = dict(os.environ if environ is None else environ)
    if env.get("KUBECONFIG"):
        return functools.partial(from_kubeconfig, env["KUBECONFIG"])
    return functools.partial(in_cluster, env, SERVICE_ACCOUNT_DIR)


def in_cluster(environ: Mapping[str, str], account_dir: Path = SERVICE_ACCOUNT_DIR) -> Credentials:
    """The pod's service account, as client-go's in-cluster config reads it."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token_file = account_dir / "token"
    if not host or not port or not token_file.is_file():
        raise CredentialsError(
            "no Kubernetes API access (in-cluster service account or KUBECONFIG): "
            "KUBERNETES_SERVICE_HOST/PORT or the service account token is missing"
        )
    server = f"[{host}]" if ":" in host else host  # an IPv6 service address
    namespace_file = account_dir / "namespace"
    return Credentials(
        server=f"https://{server}:{port}",
        token_file=token_file,
        ca_file=str(account_dir / "ca.crt"),
        default_namespace=namespace_file.read_text().strip() if namespace_file.is_file() else None,
    )


def from_kubeconfig(paths: str) -> Credentials:
    """The current context of a kubeconfig (``KUBECONFIG`` may list several files; the first value wins).
    Tokens, token files, client certificates and basic auth; exec plugins and auth providers are not run."""
    import yaml  # only off-cluster

    current: str | None = None
    sections: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    bases: dict[tuple[str, str], Path] = {}
    for raw_path in filter(None, (part.strip() for part in paths.split(os.pathsep))):
        path = Path(raw_path).expanduser()
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CredentialsError(f"KUBECONFIG={paths}: cannot read {path}: {error}") from None
        current = current or config.get("current-context")
        for section, entries in sections.items():
            for item in config.get(section) or []:
                entries.setdefault(item["name"], item.get(section[:-1]) or {})
                bases.setdefault((section, item["name"]), path.parent)
    if not current or current not in sections["contexts"]:
        raise CredentialsError(f"KUBECONFIG={paths}: current-context {current!r} names no context; set one")
    context = sections["contexts"][current]
    cluster_name, user_name = context.get("cluster", ""), context.get("user", "")
    if cluster_name not in sections["clusters"]:
        raise CredentialsError(f"KUBECONFIG={paths}: context {current!r} names no known cluster {cluster_name!r}")
    cluster = sections["clusters"][cluster_name]
    user = sections["users"].get(user_name, {})
    if "exec" in user or "auth-provider" in user:
        raise CredentialsError(
            f"KUBECONFIG={paths}: user {user_name!r} uses an exec plugin or auth provider, which is not supported; "
            "give it a token, tokenFile or client certificate"
        )

    def file(section: str, name: str, value: str | None) -> str | None:
        # Relative paths in a kubeconfig are relative to the file that holds them.
        return None if not value else str(bases[section, name] / Path(value).expanduser())

    token_file = file("users", user_name, user.get("tokenFile"))
    return Credentials(
        server=str(cluster.get("server", "")).rstrip("/"),
        token=user.get("token"),
        token_file=Path(token_file) if token_file and not user.get("token") else None,
        username=user.get("username"),
        password=user.get("password"),
        ca_file=file("clusters", cluster_name, cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        cert_file=file("users", user_name, user.get("client-certificate")),
        key_file=file("users", user_name, user.get("client-key")),
        cert_data=user.get("client-certificate-data"),
        key_data=user.get("client-key-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        default_namespace=context.get("namespace"),
    )


def token_expiry(token: str | None) -> datetime.datetime | None:
    """When a JWT (a service account token) expires, from its ``exp`` claim; None for any other token. The
    signature is not checked: this only schedules the next read of the token file."""
    parts = (token or "").split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return datetime.datetime.fromtimestamp(float(claims["exp"]), datetime.UTC)
    except (ValueError, KeyError, TypeError, OverflowError):
        return None


def _decoded(data: str) -> bytes:
    return base64.b64decode(data.encode())
