"""Build kubectl-agentrun as one executable file, its krew archive, and the krew manifest of a release.

The file is a Python zip application (PEP 441): the plugin module with the project's own packages it imports
(agentrun_api, agentrun_common), behind a `#!/usr/bin/env python3` line, so kubectl finds it on PATH as any
plugin. Its third-party packages (kubernetes, httpx, pydantic) are not inside: pydantic's compiled core would
make one file per OS, architecture and Python version; instead the file names the pinned packages to install
when one is missing. The build is reproducible (fixed timestamps and order): the same checkout gives the same
sha256, which the krew manifest records.

Usage: python release/plugin.py [--out dist] [--version 0.1.0] [--uri-base URL]
Writes <out>/kubectl-agentrun, <out>/kubectl-agentrun.tar.gz and <out>/agentrun.yaml (plugins/agentrun.yaml
with the version, the archive's URL and its sha256 filled in).
"""

import argparse
import gzip
import hashlib
import io
import re
import stat
import tarfile
import tomllib
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "kubectl-agentrun"
ARCHIVE_NAME = f"{PLUGIN_NAME}.tar.gz"
MANIFEST_TEMPLATE = REPO_ROOT / "plugins" / "agentrun.yaml"
# Where the release workflow publishes the archive: <URI_BASE>/v<version>/kubectl-agentrun.tar.gz.
DEFAULT_URI_BASE = "https://github.com/agentrun/agentrun-operator/releases/download"
# The third-party packages the plugin imports; their pins come from pyproject.toml.
PLUGIN_REQUIREMENTS = ("kubernetes", "httpx", "pydantic")
PACKAGES = (("api", "agentrun_api"), ("common", "agentrun_common"))
MODULES = ("operator/agentrun_operator/__init__.py", "operator/agentrun_operator/kubectl_plugin.py")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

MAIN = '''"""kubectl-agentrun, packed as one file by release/plugin.py."""

import sys

REQUIRES = {requires!r}

if sys.version_info < (3, 11):
    sys.exit("kubectl-agentrun needs Python 3.11 or later as python3; this is " + sys.version.split()[0])
try:
    import httpx  # noqa: F401
    import kubernetes  # noqa: F401
    import pydantic  # noqa: F401
except ImportError as missing:
    sys.exit(
        f"kubectl-agentrun needs the Python package {{missing.name}}: "
        f"python3 -m pip install --user {{' '.join(REQUIRES)}}"
    )
from agentrun_operator.kubectl_plugin import main

sys.exit(main())
'''


def project() -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return data


def requirements() -> list[str]:
    """The pinned requirement of each package the plugin imports, as pyproject.toml pins it."""
    pins = {re.split(r"[=<>!~]", pin, maxsplit=1)[0]: pin for pin in project()["dependencies"]}  # type: ignore[attr-defined]
    return [pins[name] for name in PLUGIN_REQUIREMENTS]


def sources() -> list[tuple[str, bytes]]:
    """(path in the archive, content) of every file the plugin runs, sorted."""
    files = [(module.split("/", 1)[1], (REPO_ROOT / module).read_bytes()) for module in MODULES]
    for root, package in PACKAGES:
        for path in sorted((REPO_ROOT / root / package).rglob("*.py")):
            files.append((str(path.relative_to(REPO_ROOT / root)), path.read_bytes()))
    files.append(("__main__.py", MAIN.format(requires=requirements()).encode()))
    return sorted(files)


def zipapp_bytes() -> bytes:
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in sources():
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def tarball_bytes(executable: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo(PLUGIN_NAME)
        info.size, info.mode, info.mtime = len(executable), 0o755, 0
        archive.addfile(info, io.BytesIO(executable))
    return gzip.compress(raw.getvalue(), mtime=0)


def manifest(version: str, uri: str, sha256: str) -> str:
    text = MANIFEST_TEMPLATE.read_text()
    for placeholder, value in (("VERSION", version), ("ARCHIVE_URI", uri), ("ARCHIVE_SHA256", sha256)):
        text = text.replace("{{ " + placeholder + " }}", value)
    return text


def build(out: Path, version: str, uri_base: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    executable = zipapp_bytes()
    plugin = out / PLUGIN_NAME
    plugin.write_bytes(executable)
    plugin.chmod(0o755)
    tarball = out / ARCHIVE_NAME
    tarball.write_bytes(tarball_bytes(executable))
    sha256 = hashlib.sha256(tarball.read_bytes()).hexdigest()
    krew = out / "agentrun.yaml"
    krew.write_text(manifest(version, f"{uri_base.rstrip('/')}/v{version}/{ARCHIVE_NAME}", sha256))
    return {"plugin": plugin, "archive": tarball, "manifest": krew}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "dist")
    parser.add_argument("--version", default=str(project()["version"]))
    parser.add_argument("--uri-base", default=DEFAULT_URI_BASE)
    options = parser.parse_args()
    for path in build(options.out, options.version, options.uri_base).values():
        print(path)


if __name__ == "__main__":
    main()
