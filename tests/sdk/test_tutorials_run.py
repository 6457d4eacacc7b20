"""Tutorials as tests (issue #13): every block of docs/pcsock.md and docs/tutorial-form*.md says
what it is, and every command and root-only code block runs, as written, on a testbed.

* ```python blocks without ``# needs root`` run in process (tests/sdk/test_sdk_docs.py);
* ```sh blocks run here with bash (``set -euo pipefail``), as root, in a scratch directory
  that links the repository's ``.venv`` and ``testbed/`` (the tutorials are written for the
  repository root), with the virtualenv's commands on the ``PATH``;
* ```python blocks marked ``# needs root`` run here on the run a shell block built, each in
  its node's namespace (``testbed exec NODE .venv/bin/python FILE``) as the text says (the
  form-2 pair also runs in one plain namespace in tests/sdk/test_tutorial_form2.py);
* ```text and ```json blocks are formats and pictures, not commands (json ones must parse).

:data:`COVERED` names the test that runs each command block; a block no test runs fails
:func:`test_every_command_block_is_run_by_a_test`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FILES = ["pcsock.md", "tutorial-form1.md", "tutorial-form2.md", "tutorial-form3.md"]
LABELS = {"python", "sh", "text", "json"}
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(name: str) -> list[tuple[str, str, int]]:
    """(label, code, line) of every fenced block of ``docs/<name>``."""
    text = (DOCS / name).read_text()
    return [
        (m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
    ]


def block(name: str, label: str, contains: str) -> str:
    found = [c for lab, c, _ in blocks(name) if lab == label and contains in c]
    assert len(found) == 1, f"{name}: {len(found)} {label} blocks contain {contains!r}"
    return found[0]


#: (file, label, a string only that block contains) -> the test that runs it
COVERED = {
    ("tutorial-form1.md", "sh", "pcdemo --only form1"): "test_run_it_commands",
    ("tutorial-form2.md", "sh", "pcdemo --only form2"): "test_run_it_commands",
    ("tutorial-form3.md", "sh", "pcdemo --only form3"): "test_run_it_commands",
    ("tutorial-form1.md", "sh", "my-fig2.toml"): "test_form1_from_the_shell_and_sockets",
    ("tutorial-form1.md", "python", "pcsock.listen("): "test_form1_from_the_shell_and_sockets",
    ("tutorial-form1.md", "python", "open_circuit("): "test_form1_from_the_shell_and_sockets",
    ("tutorial-form1.md", "sh", "testbed down"): "test_form1_from_the_shell_and_sockets",
    ("tutorial-form2.md", "sh", "c1.toml"): "test_form2_on_the_testbed",
    ("tutorial-form2.md", "python", "ControlClient("): "test_form2_on_the_testbed",
    ("tutorial-form2.md", "python", "pcsock.listen("): "test_form2_on_the_testbed",
    ("tutorial-form2.md", "python", "service_socket("): "test_form2_on_the_testbed",
    ("tutorial-form2.md", "sh", "testbed down"): "test_form2_on_the_testbed",
    ("tutorial-form3.md", "sh", "signup publish"): "test_form3_signup_from_the_shell",
    ("tutorial-form3.md", "python", "testbed.attach("): "test_form3_attach_from_python",
}


def _is_command(label: str, code: str) -> bool:
    return label == "sh" or (label == "python" and code.lstrip().startswith("# needs root"))


def test_every_block_says_what_it_is() -> None:
    bad = [
        f"docs/{name}:{line}: ```{label}"
        for name in FILES
        for label, _, line in blocks(name)
        if label not in LABELS
    ]
    assert not bad, f"label these blocks ({', '.join(sorted(LABELS))}): {bad}"


def test_json_blocks_parse() -> None:
    for name in FILES:
        for label, code, line in blocks(name):
            if label == "json":
                assert isinstance(json.loads(code), dict), f"docs/{name}:{line}"


def test_every_command_block_is_run_by_a_test() -> None:
    unrun = []
    for name in FILES:
        for label, code, line in blocks(name):
            if not _is_command(label, code):
                continue
            keys = [k for k in COVERED if k[:2] == (name, label) and k[2] in code]
            if len(keys) != 1:
                unrun.append(f"docs/{name}:{line}")
    assert not unrun, f"command blocks no test runs (add them to COVERED): {unrun}"
    for name, label, needle in COVERED:
        block(name, label, needle)  # exactly one block each


# --- running them ---------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch directory that looks like the repository root to the tutorials."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "testbed").symlink_to(ROOT / "testbed")
    return tmp_path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.pop("TESTBED_RUN", None)
    return env


def bash(code: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with bash -euo pipefail; the run it exports (if any) lands in ``.run``."""
    script = "trap 'echo \"${TESTBED_RUN:-}\" > .run' EXIT\nset -euo pipefail\n" + code
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _down(cwd: Path) -> None:
    run = (cwd / ".run").read_text().strip() if (cwd / ".run").exists() else ""
    if run:
        subprocess.run(
            [sys.executable, "-m", "testbed", "down", run], capture_output=True, timeout=60
        )


def _ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.netns
@pytest.mark.parametrize("name", ["tutorial-form1.md", "tutorial-form2.md", "tutorial-form3.md"])
def test_run_it_commands(name: str, workdir: Path) -> None:
    code = block(name, "sh", "pcdemo --only")
    out = _ok(bash(code, workdir))
    assert re.search(r"(\d+)/\1 scenarios passed \(testbed\)", out), out


@pytest.mark.netns
def test_form1_from_the_shell_and_sockets(workdir: Path) -> None:
    name = "tutorial-form1.md"
    try:
        out = _ok(bash(block(name, "sh", "my-fig2.toml"), workdir))
        assert "my-fig2.toml: ok: topology fig2" in out
        assert '"psp": "acme"' in out and '"port": 7053' in out  # discover psp
        assert "reply from 198.18.64.2: b'ack'" in out
        got = json.loads(out.strip().splitlines()[-1])  # recv.log
        assert (got["source"], got["via"], got["form"], got["payload"], got["dport"]) == (
            "198.18.10.2", "198.18.254.3", 1, "hello", 9,
        )  # fmt: skip
        # §4: D's program, then (once D listens) S's, each in its node as the text says
        run = (workdir / ".run").read_text().strip()
        d_out, s_out = _programs(
            workdir,
            run,
            ("D", block(name, "python", "pcsock.listen(")),
            ("S", block(name, "python", "open_circuit(")),
        )
        assert s_out.strip() == "b'ack'"
        source, _label, via, payload = d_out.split()
        assert (source, via, payload) == ("198.18.10.2", "198.18.254.3", "b'hello'")
        # "When done"
        env_run = f"export TESTBED_RUN={run}\n"
        _ok(bash(env_run + block(name, "sh", "testbed down"), workdir))
        assert not (Path("/run/netns") / f"{run}-S").exists()
    finally:
        _down(workdir)


def _programs(workdir: Path, run: str, rx: tuple[str, str], tx: tuple[str, str]) -> tuple[str, str]:
    """Start ``rx`` = (node, code), wait until it listens on D's PacketCloud port, run ``tx``;
    both programs' stdout."""
    tb = [sys.executable, "-m", "testbed", "exec", "--run", run]
    (workdir / "rx.py").write_text(rx[1])
    (workdir / "tx.py").write_text(tx[1])
    d = subprocess.Popen(
        [*tb, rx[0], ".venv/bin/python", "rx.py"], cwd=workdir, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert d.poll() is None, d.communicate()  # rx.py ended before it listened
            ss = subprocess.run([*tb, rx[0], "ss", "-Huln"], capture_output=True, text=True)
            return "198.18.64.2:6253" in ss.stdout

        assert wait_until(listening, 30, 0.1), "rx.py never listened on 198.18.64.2:6253"
        s = subprocess.run(
            [*tb, tx[0], ".venv/bin/python", "tx.py"], cwd=workdir, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert s.returncode == 0, s.stderr
        d_out, d_err = d.communicate(timeout=30)
        assert d.returncode == 0, d_err
    finally:
        if d.poll() is None:
            d.kill()
            d.wait()
    return d_out, s.stdout


@pytest.mark.netns
def test_form2_on_the_testbed(workdir: Path) -> None:
    name = "tutorial-form2.md"
    try:
        _ok(bash(block(name, "sh", "c1.toml"), workdir))
        run = (workdir / ".run").read_text().strip()
        (workdir / "psp.py").write_text(block(name, "python", "ControlClient("))
        reg = _ok(bash(f"testbed exec --run {run} PSP .venv/bin/python psp.py", workdir))
        assert "'service_id': 49374" in reg
        d_out, _ = _programs(
            workdir,
            run,
            ("D", block(name, "python", "pcsock.listen(")),
            ("S", block(name, "python", "service_socket(")),
        )
        # form 2, the service ID, metadata 0 (C1 runs the no-op), the payload: through C1
        assert d_out.split() == ["2", "0xc0de", "0", "b'hello'"]
        _ok(bash(f"export TESTBED_RUN={run}\n" + block(name, "sh", "testbed down"), workdir))
    finally:
        _down(workdir)


@pytest.mark.netns
def test_form3_signup_from_the_shell(workdir: Path) -> None:
    try:
        out = _ok(bash(block("tutorial-form3.md", "sh", "signup publish"), workdir))
    finally:
        _down(workdir)
    assert "valid: 198.18.64.0/24 owner=acme service=firewall" in out
    lines = out.splitlines()
    reg = json.loads(next(line for line in lines if line.startswith("{")))
    assert reg["diverted"] is True and reg["prefix"] == "198.18.64.0/24"
    assert "diverting 198.18.64.0/24 at R1" in out
    anchor = (workdir / "anchor.txt").read_text()
    assert anchor.startswith("64.18.198.in-addr.arpa. IN DS ")
    # the proof the site accepted chains to that anchor (checked again, independently)
    from pcsock import ownership

    claim = ownership.validate_proof(
        (workdir / "proof.txt").read_text(), "198.18.64.0/24", anchor, time.time(), owner="acme"
    )
    assert claim.service == "firewall"


@pytest.mark.netns
def test_form3_attach_from_python(workdir: Path) -> None:
    code = block("tutorial-form3.md", "python", "testbed.attach(")
    (workdir / "attach.py").write_text(code)
    try:
        out = _ok(
            bash(
                "export TESTBED_RUN=$(testbed up fig2 -q)\n.venv/bin/python attach.py\n"
                "testbed exec R1 nft list set ip packetcloud divert_dst\n",
                workdir,
            )
        )
        run = (workdir / ".run").read_text().strip()
        # the record is served, and its proof validates against the printed DS
        import testbed
        from pcsock import ownership

        live = testbed.attach(run)
        proof = live.node("D").call(
            lambda: ownership.fetch_proof(
                "198.18.64.0/24", server="198.18.0.18", anchor_zone="64.18.198.in-addr.arpa."
            )
        )
        ds = next(line for line in out.splitlines() if " IN DS " in line)
        claim = ownership.validate_proof(proof.text, "198.18.64.0/24", ds, time.time())
        assert (claim.owner, claim.service) == ("acme", "firewall")
        assert "198.18.64.0/24" in out  # the diversion is in R1's set
    finally:
        _down(workdir)
