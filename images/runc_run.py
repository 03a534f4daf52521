"""Run an image built by `make images` under runc as a pod with a restricted securityContext would run it.

The image's own entrypoint, user, environment and working directory; a read-only root filesystem; every
capability dropped and no new privileges; writable tmpfs only at /tmp and the runner's volume mount points. The
host's network (no network namespace), so a process in it reaches servers on this machine. Prints the command's
output and, on stderr, the wall time from `runc run` to the process's exit.

Usage (root, buildah and runc installed): python3 images/runc_run.py IMAGE [ARG...]   (the entrypoint's arguments)
       python3 images/runc_run.py IMAGE -- COMMAND [ARG...]   (instead of the entrypoint)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]
# The pod's writable volumes (operator/agentrun_operator/children.py mounts these; /tmp is an emptyDir).
WRITABLE = ("/tmp", "/var/lib/agentrun/workspace", "/var/lib/agentrun/checkpoint")


def buildah(*args: str) -> str:
    return subprocess.run([*BUILDAH, *args], check=True, capture_output=True, text=True).stdout.strip()


def bundle_config(bundle: Path, image_config: dict, rootfs: str, args: list[str]) -> dict:
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)  # runc's defaults, then the image's
    spec = json.loads((bundle / "config.json").read_text())
    user = image_config.get("User", "0:0")
    uid, _, gid = user.partition(":")
    process = spec["process"]
    process["terminal"] = False
    if args[:1] == ["--"]:  # a command of its own instead of the entrypoint, as a pod's `command` is
        process["args"] = args[1:]
    else:
        process["args"] = [*image_config.get("Entrypoint", []), *(args or image_config.get("Cmd") or [])]
    process["env"] = image_config.get("Env", [])
    process["cwd"] = image_config.get("WorkingDir") or "/"
    process["user"] = {"uid": int(uid), "gid": int(gid or uid)}
    process["noNewPrivileges"] = True
    process["capabilities"] = {kind: [] for kind in ("bounding", "effective", "permitted", "ambient")}
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["hostname"] = "agentrun"
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "network"]
    for path in WRITABLE:
        spec["mounts"].append(
            {"destination": path, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}
        )
    return spec


def main() -> int:
    image, args = sys.argv[1], sys.argv[2:]
    config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    container = buildah("from", "--quiet", "--pull-never", image)
    bundle = Path(tempfile.mkdtemp(prefix="agentrun-bundle."))
    try:
        rootfs = buildah("mount", container)
        (bundle / "config.json").write_text(json.dumps(bundle_config(bundle, config, rootfs, args)))
        started = time.monotonic()
        done = subprocess.run(["runc", "run", "--bundle", str(bundle), bundle.name.replace(".", "-")], check=False)
        sys.stderr.write(f"runc run: exit {done.returncode} after {time.monotonic() - started:.2f} s\n")
        return done.returncode
    finally:
        buildah("umount", container)
        buildah("rm", container)
        shutil.rmtree(bundle)


if __name__ == "__main__":
    sys.exit(main())
