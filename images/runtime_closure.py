"""Copy a distroless-style Python runtime out of a debootstrapped Debian tree.

The runtime holds the files of the interpreter's package and of every package it depends on, by dpkg's own
status and file lists, minus documentation; the CA certificates; the dynamic linker's cache; the passwd and group
files; /tmp. No shell, no package manager: what an attacker could run in the container is the interpreter alone.
The chosen packages' dpkg stanzas go to /var/lib/dpkg/status.d/ (the distroless layout), so image scanners still
see which Debian packages, at which versions, the image holds.

Usage: python3 runtime_closure.py ROOTFS DEST INTERPRETER_PACKAGE
"""

import os
import re
import shutil
import stat
import sys
from pathlib import Path

# Dependencies that only serve package management or a shell (install-info for readline's info pages, debconf
# for maintainer scripts): a runtime with no dpkg never runs them.
NOT_AT_RUN_TIME = {"dpkg", "install-info", "debconf", "debconf-2.0", "perl-base", "dash", "bash", "coreutils"}
SKIPPED_PREFIXES = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/lintian/")
# Taken whole from the tree, besides the packages' files.
EXTRA_PATHS = (
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
    "/etc/ld.so.cache",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/os-release",
    "/usr/lib/os-release",
    "/etc/debian_version",
)


def installed_packages(rootfs: Path) -> dict[str, str]:
    """Package name -> its stanza in dpkg's status file, for installed packages."""
    stanzas = (rootfs / "var/lib/dpkg/status").read_text().strip().split("\n\n")
    packages = {}
    for stanza in stanzas:
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, flags=re.MULTILINE))
        if fields.get("Status", "").endswith(" installed"):
            packages[fields["Package"]] = stanza
    return packages


def dependencies(stanza: str, installed: dict[str, str]) -> list[str]:
    """The installed package that satisfies each Depends and Pre-Depends clause (the first alternative present)."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        match = re.search(rf"^{field}: (.*)$", stanza, flags=re.MULTILINE)
        if not match:
            continue
        for clause in match.group(1).split(","):
            alternatives = [re.split(r"[\s(:]", option.strip(), maxsplit=1)[0] for option in clause.split("|")]
            chosen = next((name for name in alternatives if name in installed), None)
            if chosen is not None:
                names.append(chosen)
    return names


def closure(root: str, installed: dict[str, str]) -> list[str]:
    chosen: set[str] = set()
    pending = [root]
    while pending:
        name = pending.pop()
        if name in chosen or name in NOT_AT_RUN_TIME:
            continue
        chosen.add(name)
        pending.extend(dependencies(installed[name], installed))
    return sorted(chosen)


def file_list(rootfs: Path, package: str) -> list[str]:
    info = rootfs / "var/lib/dpkg/info"
    (listing,) = [
        path for path in info.glob(f"{package}*.list") if path.name.split(".list")[0].split(":")[0] == package
    ]
    return [line for line in listing.read_text().splitlines() if line and line != "/."]


def copy_path(rootfs: Path, dest: Path, path: str) -> None:
    source = rootfs / path.lstrip("/")
    target = dest / path.lstrip("/")
    mode = source.lstat().st_mode
    if stat.S_ISDIR(mode):
        if os.path.islink(target):
            return
        if stat.S_ISLNK(mode):  # the merged-/usr links: /bin -> usr/bin
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(source), target)
            return
        if path in EXTRA_PATHS:
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        target.unlink()
    shutil.copy2(source, target, follow_symlinks=False)


def main() -> None:
    rootfs, dest, interpreter = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    installed = installed_packages(rootfs)
    packages = closure(interpreter, installed)
    dest.mkdir(parents=True)
    for top in sorted(rootfs.iterdir()):  # the merged-/usr links first, so files under /lib land in /usr/lib
        if top.is_symlink():
            os.symlink(os.readlink(top), dest / top.name)
            (dest / top.name).resolve().mkdir(parents=True, exist_ok=True)
    status_dir = dest / "var/lib/dpkg/status.d"
    status_dir.mkdir(parents=True)
    for package in packages:
        for path in file_list(rootfs, package):
            if not path.startswith(SKIPPED_PREFIXES) or path.endswith("/copyright"):
                copy_path(rootfs, dest, path)
        (status_dir / package).write_text(installed[package] + "\n")
    for path in EXTRA_PATHS:
        if os.path.lexists(rootfs / path.lstrip("/")):
            copy_path(rootfs, dest, path)
    for interpreter_name in ("python3", "python"):
        os.symlink(interpreter, dest / "usr/bin" / interpreter_name)
    for scratch in ("tmp", "var/tmp"):
        (dest / scratch).mkdir(parents=True, exist_ok=True)
        (dest / scratch).chmod(0o1777)
    print(f"runtime: {len(packages)} packages: {' '.join(packages)}")


if __name__ == "__main__":
    main()
