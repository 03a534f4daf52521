"""API keys for callers outside the cluster: each bound to one namespace, stored only as a SHA-256 hash.

A key reads ``ark_<id>_<secret>``. Its Secret, ``agentrun-api-key-<id>`` in the API keys namespace (the
gateway's own by default), holds the namespace the key may act in and the hash of the whole key; the key
itself is shown once, when it is made, and kept nowhere. The id names the Secret, so a key is checked with
one read by name (the gateway may read Secrets in that namespace only), never by listing.

``python -m agentrun_gateway.api_keys --namespace team-a`` prints a new key and the Secret to apply.
"""

import argparse
import base64
import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any, Final

import yaml

from agentrun_api import constants

PREFIX: Final = "ark"
SECRET_NAME_PREFIX: Final = "agentrun-api-key-"  # noqa: S105 - a name, not a secret
NAMESPACE_KEY: Final = "namespace"
HASH_KEY: Final = "sha256"
LABEL_API_KEY: Final = f"{constants.GROUP}/api-key"
_KEY_FORM = re.compile(r"^ark_([a-z0-9]{8,40})_([A-Za-z0-9_-]{20,200})$")


@dataclass(frozen=True)
class PresentedKey:
    key_id: str
    digest: str  # hex SHA-256 of the whole key

    @property
    def secret_name(self) -> str:
        return SECRET_NAME_PREFIX + self.key_id


def parse(presented: str) -> PresentedKey | None:
    """The key's id and hash, or None when the text is not in the form of an API key (a Kubernetes token)."""
    match = _KEY_FORM.match(presented)
    if match is None:
        return None
    return PresentedKey(match.group(1), hashlib.sha256(presented.encode()).hexdigest())


def bound_namespace(presented: PresentedKey, secret_data: dict[str, str]) -> str | None:
    """The namespace the key acts in, when the Secret's hash matches it (compared in constant time)."""
    stored = base64.b64decode(secret_data.get(HASH_KEY, "")).decode(errors="replace")
    namespace = base64.b64decode(secret_data.get(NAMESPACE_KEY, "")).decode(errors="replace")
    if not stored or not namespace or not hmac.compare_digest(stored.encode(), presented.digest.encode()):
        return None
    return namespace


def new_key() -> tuple[str, PresentedKey]:
    """A fresh key (about 256 random bits) and its id and hash."""
    key = f"{PREFIX}_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    parsed = parse(key)
    assert parsed is not None
    return key, parsed


def key_secret(presented: PresentedKey, keys_namespace: str, namespace: str) -> dict[str, Any]:
    """The Secret that makes a key valid for ``namespace``: its hash, never the key."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": presented.secret_name,
            "namespace": keys_namespace,
            "labels": {LABEL_API_KEY: "true", constants.LABEL_PART_OF: constants.PART_OF},
        },
        "stringData": {NAMESPACE_KEY: namespace, HASH_KEY: presented.digest},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make an API key for the runs API, bound to one namespace.")
    parser.add_argument("--namespace", required=True, help="the namespace whose runs the key may submit and read")
    parser.add_argument(
        "--keys-namespace", default="agentrun-system", help="where the gateway reads API keys (its own namespace)"
    )
    args = parser.parse_args(argv)
    key, presented = new_key()
    print(f"# API key (shown once; give it to the caller): {key}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump(key_secret(presented, args.keys_namespace, args.namespace), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
