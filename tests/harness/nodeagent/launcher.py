"""Set up one container's mounts, then become the container's command (stdlib only; run as a script).

The node agent starts this as ``unshare --mount --propagation private -- python launcher.py SPEC``,
so every mount below happens in a mount namespace private to this container and vanishes with it.
SPEC is a JSON file: {"mounts": [{"source", "target", "readOnly"}], "sharedPaths", "workingDir", "argv", "env"}.
sharedPaths are host directories that stay visible at their own path even where a volume covers them
(the stand-in for files baked into an image, such as the source tree on PYTHONPATH).
With ``--check`` it only proves that bind mounts are permitted here, and exits 0.
"""

import ctypes
import json
import os
import sys

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
EXIT_SETUP_FAILED = 128  # like a runtime that could not start the container (kubelet's StartError)
EXIT_COMMAND_NOT_FOUND = 127

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    result = _libc.mount(
        None if source is None else source.encode(), target.encode(), None, ctypes.c_ulong(flags), None
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _covered(path: str, mounts: list[dict[str, object]]) -> bool:
    return any(path == str(m["target"]) or path.startswith(str(m["target"]).rstrip("/") + "/") for m in mounts)


def _apply_mounts(mounts: list[dict[str, object]], shared_paths: list[str]) -> None:
    # Open every source before mounting anything: a later mount (an emptyDir on /tmp, say) may
    # cover the directory a source lives in; the open descriptor still reaches the right one.
    opened = [(os.open(str(m["source"]), os.O_PATH), m) for m in mounts]
    shared = [
        (os.open(path, os.O_PATH), path) for path in shared_paths if os.path.isdir(path) and _covered(path, mounts)
    ]
    for fd, mount in sorted(opened, key=lambda pair: str(pair[1]["target"]).count("/")):
        target = str(mount["target"])
        _mount(f"/proc/self/fd/{fd}", target, MS_BIND)
        if mount.get("readOnly"):
            _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.close(fd)
    for fd, path in shared:
        os.makedirs(path, exist_ok=True)  # inside the covering volume: an empty mount point
        _mount(f"/proc/self/fd/{fd}", path, MS_BIND)
        os.close(fd)


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        probe = os.path.dirname(os.path.abspath(__file__))
        _mount(probe, probe, MS_BIND)
        return
    with open(sys.argv[1]) as spec_file:
        spec = json.load(spec_file)
    try:
        _apply_mounts(spec["mounts"], spec.get("sharedPaths", []))
        if spec.get("workingDir"):
            os.chdir(spec["workingDir"])
    except OSError as error:
        print(f"node agent: cannot set up the container: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_SETUP_FAILED)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as error:
        print(f"node agent: cannot run {argv[0]!r}: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_COMMAND_NOT_FOUND)


if __name__ == "__main__":
    main()
