"""known_hosts files are parsed once per version of the file, and a change is seen."""

from __future__ import annotations

import os
from pathlib import Path

import paramiko
import pytest

from skyward.errors import HostKeyError
from skyward.ssh import keys
from skyward.ssh.keys import KnownHosts, generate_keypair


def _key(pair: keys.KeyPair) -> paramiko.PKey:
    return keys._public_key(pair.public_line)


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    old, new = generate_keypair(), generate_keypair()
    path.write_text(f"[10.0.0.5]:2222 {old.public_line}\n")
    verifier = KnownHosts((path,))
    verifier.verify("10.0.0.5", 2222, _key(old))
    assert keys._parsed(path) is keys._parsed(path)  # parsed once
    path.write_text(f"[10.0.0.5]:2222 {new.public_line}\n")
    os.utime(path, ns=(1, 1))  # even with an mtime that went backwards
    with pytest.raises(HostKeyError, match="CHANGED"):
        verifier.verify("10.0.0.5", 2222, _key(old))
    verifier.verify("10.0.0.5", 2222, _key(new))


def test_the_first_file_naming_a_host_wins_and_missing_files_are_skipped(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    one, two = generate_keypair(), generate_keypair()
    first.write_text(f"host1 {one.public_line}\n")
    second.write_text(f"host1 {two.public_line}\nhost2 {two.public_line}\n")
    verifier = KnownHosts((tmp_path / "missing", first, second))
    assert verifier.key_types("host1", 22) == ["ssh-ed25519"]
    verifier.verify("host1", 22, _key(one))
    verifier.verify("host2", 22, _key(two))
    with pytest.raises(HostKeyError, match="not a known host"):
        verifier.verify("host3", 22, _key(one))
