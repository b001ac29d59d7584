"""Every sub-command's failures exit non-zero with a clear line, never a traceback.

Each case runs the console entry point (``simulations.cli:main``, what ``fedistill``
runs) in process on bad input and checks the exit code and the message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from simulations.cli import main

MISSING = "/nonexistent/fedistill-test"

# (argv, a fragment of the message); TMP in an argument is the test's own folder
CASES = [
    (["nope"], "No such command"),
    (["simulate", "--preset", "nope"], "Unknown preset"),
    (["simulate", "--set", "nope=1"], "nope"),
    (["simulate", "--set", "rounds"], "key=value"),
    (["simulate", "--config", f"{MISSING}.toml"], "does not exist"),
    (["simulate", "--baseline", "nope"], "Unknown baseline"),
    (["simulate", "--preset", "quick", "--set", "dataset=digits", "--out", "TMP/run"],
     "'transformer' does not read images"),
    (["robustness", "--preset", "nope"], "Unknown preset"),
    (["robustness", "--attacks", "nope"], "not poisoning attacks"),
    (["certs", "--out", "TMP/certs", "--nodes", "-1"], "--nodes"),
    (["certs", "--out", "/proc/fedistill-certs"], "/proc/fedistill-certs"),
    (["coordinator", "--certs", MISSING, "--dry-run"], "no node public keys"),
    (["node", "--superlink", "127.0.0.1:1", "--data-dir", "TMP", "--state-dir", "TMP/st",
      "--epsilon", "1"], "--root-certificates"),
    (["node", "--superlink", "127.0.0.1:1", "--data-dir", "TMP", "--state-dir", "TMP/st",
      "--epsilon", "-1", "--insecure"], "--epsilon"),
    (["node", "--superlink", "127.0.0.1:99999", "--data-dir", "TMP", "--state-dir", "TMP/st",
      "--epsilon", "1", "--insecure"], "port 99999 is out of range"),
    (["node", "--superlink", "127.0.0.1:1", "--data-dir", "TMP", "--state-dir", "TMP/st",
      "--epsilon", "1", "--insecure", "--partition-id", "5", "--num-partitions", "2"],
     "does not fit --num-partitions 2"),
    (["node", "--superlink", "127.0.0.1:1", "--data-dir", MISSING, "--state-dir", "TMP/st",
      "--epsilon", "1", "--insecure"], "not found"),
    (["node", "--superlink", "127.0.0.1:1", "--data-dir", "TMP", "--state-dir", "TMP/st",
      "--epsilon", "1", "--insecure", "--app-pin", "nope"], "--app-pin 'nope'"),
    (["coordinator", "--insecure", "--port", "70000", "--dry-run"], "--port 70000 is out"),
    (["node-data", "--out", "TMP/nd", "--preset", "nope"], "Unknown preset"),
    (["data", "describe", "no-such-dataset"], "Unknown dataset"),
    (["data", "list", "--bogus"], "No such option"),
    (["audit", "verify", MISSING], "no such file"),
    (["audit", "report", MISSING, "--out", "TMP/report"], "no such file"),
    (["audit", "mia", "--run", MISSING], "--client"),
    (["audit", "dpsgd", "--epsilon", "-1"], "epsilon"),
    (["audit", "softlabels", "--preset", "nope"], "'nope'"),
]


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(c[0][:2]) + f"-{i}"
                                                           for i, c in enumerate(CASES)])
def test_a_failing_command_exits_non_zero_with_a_clear_message(
        argv: list[str], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("TMP", str(tmp_path)) for a in argv]
    monkeypatch.setattr(sys, "argv", ["fedistill", *args])
    monkeypatch.setenv("COLUMNS", "200")  # one message, one line
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert exited.value.code not in (0, None), text
    assert fragment in text, text
    assert "Traceback" not in text
