"""The node key file: created 0600, never overwritten, corruption reported clearly."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshd.identity import (
    IdentityError,
    IdentityExists,
    create_node_key,
    insecure_mode_warning,
    load_node_key,
)


def test_create_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key = create_node_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert insecure_mode_warning(path) is None
    loaded = load_node_key(path)
    assert loaded.seed == key.seed
    assert key.node_id.text in path.read_text()


def test_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = create_node_key(path)
    with pytest.raises(IdentityExists, match="refusing to overwrite"):
        create_node_key(path)
    assert load_node_key(path).seed == first.seed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe", "not a meshd key file"),
        (b"hello", "not a meshd key file"),
        (b'version = 2\ntype = "ed25519"\nseed = ""\n', "expected version = 1"),
        (b'version = 1\ntype = "ed25519"\nseed = "abcd"\n', "seed must be 64 hex digits"),
        (b'version = 1\ntype = "ed25519"\nseed = "' + b"zz" * 32 + b'"\n', "64 hex digits"),
    ],
)
def test_corrupt_files_are_reported(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    with pytest.raises(IdentityError, match=message):
        load_node_key(path)


def test_peer_id_mismatch_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    create_node_key(path)
    other = tmp_path / "other.key"
    create_node_key(other)
    text = path.read_text().splitlines()
    text[-1] = next(line for line in other.read_text().splitlines() if "peer_id" in line)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(IdentityError, match="its seed gives peer id"):
        load_node_key(path)


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="run `meshd init`"):
        load_node_key(tmp_path / "node.key")
    (tmp_path / "dir.key").mkdir()
    with pytest.raises(IdentityError, match="cannot read node key"):
        load_node_key(tmp_path / "dir.key")


def test_loose_mode_is_flagged(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    create_node_key(path)
    path.chmod(0o644)
    warning = insecure_mode_warning(path)
    assert warning is not None
    assert "0644" in warning
