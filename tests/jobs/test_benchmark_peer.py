"""jobs/benchmark_generation.py --peer ctranslate2: without ctranslate2 it refuses at
once (exit 2, one line naming the extra to install) before building any model."""

from __future__ import annotations

import builtins
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jobs" / "benchmark_generation.py"


def test_peer_without_ctranslate2_exits_2_naming_the_extra(monkeypatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("benchmark_generation_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    real_import = builtins.__import__

    def no_ctranslate2(name, *args, **kwargs):
        if name == "ctranslate2" or name.startswith("ctranslate2."):
            raise ImportError("No module named 'ctranslate2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ctranslate2)
    monkeypatch.delitem(sys.modules, "ctranslate2", raising=False)
    assert module.main(["--peer", "ctranslate2", "--model", "bart"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e .[bench]" in err[0]


@pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is not None, reason="ctranslate2 is installed here")
def test_peer_refusal_as_a_process() -> None:
    """The same through the command line, where ctranslate2 is really absent."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--peer", "ctranslate2", "--model", "t5"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "--peer ctranslate2 needs ctranslate2: pip install -e .[bench]"
