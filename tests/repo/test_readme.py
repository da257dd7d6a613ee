"""The README's combiner_core quick start runs as written (paths moved into tmp_path)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_start_runs(tmp_path: Path, capsys) -> None:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no python block"
    code = blocks[0].replace("/tmp/bert2bert", str(tmp_path / "bert2bert"))
    exec(compile(code, "README.md quick start", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.strip()
    text, score = printed.rsplit(" ", 1)
    assert text and float(score) < 0
    assert (tmp_path / "bert2bert" / "combiner_manifest.json").exists()
