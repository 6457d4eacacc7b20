"""The site config parse reports every mistake it can, each with its line (issue #13 item 12)."""

from __future__ import annotations

import pytest

from pcsite_lite.cli import main
from pcsite_lite.daemon.config import ConfigError, load

BAD = """\
[site]
name = "C1"
public_ip = "198.18.254.1"
workers = 500
colour = "red"

[dataplane]
mtu = "big"
batch = 5000
bogus = 1

[control]
admin_token = "x"

[services]
memory_mb = 1
"""


def test_every_error_is_reported_with_its_line(tmp_path) -> None:
    (tmp_path / "site.toml").write_text(BAD)
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "site.toml")
    got = [(e.line, e.key) for e in info.value.errors]
    assert got == [
        (4, "site.workers"),
        (5, "site.colour"),
        (8, "dataplane.mtu"),
        (9, "dataplane.batch"),
        (10, "dataplane.bogus"),
        (13, "control.admin_token"),
        (16, "services.memory_mb"),
    ]
    assert str(info.value).startswith("line 4: site.workers: must be in 1..64, got 500")
    assert str(info.value).endswith("(7 errors)")


def test_a_stopping_mistake_still_lets_later_sections_be_checked(tmp_path, capsys) -> None:
    text = '[site]\nname = "C1"\n\n[control]\nadmin_token = "' + "a" * 20 + '"\nnope = 1\n'
    text += "[limits]\nmax_connections = 0\n"
    (tmp_path / "site.toml").write_text(text)  # site.public_ip missing stops [site]
    assert main(["check-config", "-c", str(tmp_path / "site.toml")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"pcsite: bad configuration: {tmp_path / 'site.toml'}: line 1: site.public_ip: is required"
    )
    assert len(err.splitlines()) == 3
    assert "line 1: site.public_ip: is required" in err
    assert "line 6: control.nope: unknown key" in err
    assert "line 8: limits.max_connections: must be in" in err


def test_one_mistake_reads_as_before(tmp_path) -> None:
    (tmp_path / "site.toml").write_text('[site]\nname = "C1"\npublic_ip = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "site.toml")
    assert len(info.value.errors) == 1 and info.value.key == "site.public_ip"
    assert str(info.value) == "line 3: site.public_ip: 'nope' is not an IPv4 address"


def test_a_replicated_fis_url_is_accepted_with_credentials_only(tmp_path) -> None:
    site = '[site]\nname = "C1"\npublic_ip = "198.18.254.1"\nfis = "{}"\n'
    site += '[control]\nadmin_token = "0123456789abcdef0123456789abcdef"\n'
    good = "redis+sentinel://pcsite:secret@127.0.0.1:26379,127.0.0.1:26380/pcfis?wait=1"
    (tmp_path / "site.toml").write_text(site.format(good))
    assert load(tmp_path / "site.toml").fis_url == good
    (tmp_path / "site.toml").write_text(site.format("redis+sentinel://127.0.0.1:26379/pcfis"))
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "site.toml")
    assert info.value.key == "site.fis" and "credentials" in str(info.value)
