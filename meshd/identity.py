"""The node key file: the node's Ed25519 seed, in `<data dir>/node.key`, mode 0600.

Format (TOML, so a human can see what it is and tools can parse it):

    # meshd node key: the Ed25519 seed of this node's identity. Keep it secret.
    version = 1
    type = "ed25519"
    seed = "<64 hex digits: the 32-byte seed>"
    peer_id = "<base58 PeerID derived from the seed; informative, checked on load>"

The seed alone defines the key; `peer_id` is there so an operator can tell which node a
file belongs to, and a mismatch on load reveals a hand-edited or corrupted file.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from protocol.ids import SigningKey

__all__ = [
    "KEY_FILE_VERSION",
    "IdentityError",
    "IdentityExists",
    "create_node_key",
    "insecure_mode_warning",
    "load_node_key",
    "load_psk",
    "refuse_insecure",
]

KEY_FILE_VERSION = 1
_SEED_LEN = 32


class IdentityError(Exception):
    """The node key file is missing, unreadable or corrupt; the message says which."""


class IdentityExists(IdentityError):
    """`create_node_key` refused to overwrite an existing key file."""


def _render(key: SigningKey) -> str:
    return (
        "# meshd node key: the Ed25519 seed of this node's identity. Keep it secret:\n"
        "# whoever holds this file can act as this node.\n"
        f"version = {KEY_FILE_VERSION}\n"
        'type = "ed25519"\n'
        f'seed = "{key.seed.hex()}"\n'
        f'peer_id = "{key.node_id.text}"\n'
    )


def create_node_key(path: Path) -> SigningKey:
    """Create a new node key file at `path` (mode 0600); never overwrite an existing one."""
    key = SigningKey.generate()
    try:
        # O_EXCL makes "refuse to overwrite" atomic; 0o600 is applied at creation, so the
        # secret is never readable by others, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityExists(
            f"{path} already exists: refusing to overwrite a node identity"
        ) from None
    except OSError as exc:
        raise IdentityError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(_render(key))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise IdentityError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return key


def load_node_key(path: Path) -> SigningKey:
    """Read the node key; raise `IdentityError` saying what is wrong with the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            f"no node key at {path}: run `meshd init` for this data directory first"
        ) from None
    except OSError as exc:
        raise IdentityError(f"cannot read node key {path}: {exc.strerror or exc}") from exc
    try:
        fields = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise IdentityError(f"node key {path} is corrupt: not a meshd key file ({exc})") from exc
    if fields.get("version") != KEY_FILE_VERSION or fields.get("type") != "ed25519":
        raise IdentityError(
            f"node key {path} is corrupt: expected version = {KEY_FILE_VERSION} and "
            'type = "ed25519"'
        )
    seed_text = fields.get("seed")
    try:
        seed = bytes.fromhex(seed_text) if isinstance(seed_text, str) else b""
    except ValueError:
        seed = b""
    if len(seed) != _SEED_LEN:
        raise IdentityError(f"node key {path} is corrupt: seed must be {_SEED_LEN * 2} hex digits")
    key = SigningKey.from_seed(seed)
    recorded = fields.get("peer_id")
    if recorded is not None and recorded != key.node_id.text:
        raise IdentityError(
            f"node key {path} is corrupt: its seed gives peer id {key.node_id.text}, "
            f"but the file says {recorded}"
        )
    return key


def refuse_insecure(directory: Path, key_path: Path) -> None:
    """Raise `IdentityError` if the data directory or the node key is open to group or others.

    `meshd run` checks this before it starts: the key is the node's identity, and the data
    directory holds the database (agents' state) and the API socket.
    """
    for path, fix in ((directory, "700"), (key_path, "600")):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError as exc:
            raise IdentityError(f"cannot check {path}: {exc.strerror or exc}") from exc
        if mode & 0o077:
            raise IdentityError(
                f"{path} has mode {mode:04o}: group or others can reach it; refusing to run "
                f"(fix: chmod {fix} {path})"
            )


_PSK_HEADER = ("/key/swarm/psk/1.0.0/", "/base16/")


def load_psk(path: Path) -> str:
    """The private-network key in `path` as 64 hex digits (a go-libp2p swarm.key or bare hex).

    The file must be private (mode 0600 or stricter): whoever reads it may join the network.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise IdentityError(f"cannot read private-network key {path}: {reason}") from exc
    if mode & 0o077:
        raise IdentityError(
            f"private-network key {path} has mode {mode:04o}; refusing to run (chmod 600 {path})"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[:2] == list(_PSK_HEADER):
        lines = lines[2:]
    key = lines[0].lower() if len(lines) == 1 else ""
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise IdentityError(
            f"private-network key {path} is not 64 hex digits (optionally after the "
            "/key/swarm/psk/1.0.0/ and /base16/ lines of a swarm.key)"
        )
    return key


def insecure_mode_warning(path: Path) -> str | None:
    """A warning if the key file is readable or writable by group or others, else None."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if mode & 0o077:
        return f"node key {path} has mode {mode:04o}; it should be 0600 (chmod 600 {path})"
    return None
