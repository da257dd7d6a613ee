"""Layering rules from DESIGN.md that code review alone would miss."""

from __future__ import annotations

import subprocess
import sys


def test_combiner_core_never_imports_ray() -> None:
    code = (
        "import sys, combiner_core, combiner_core.generation, combiner_core.checkpoint\n"
        "leaked = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "print(','.join(leaked))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"combiner_core pulled in Ray modules: {out.stdout.strip()}"


def test_public_surface_is_declared() -> None:
    import combiner_core
    import pipelines

    for package in (combiner_core, pipelines):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, f"{package.__name__}.__all__ names missing attributes: {missing}"


def test_help_and_validate_only_import_no_torch_transformers_or_ray() -> None:
    """--help and --validate-only answer at once: the heavy libraries load only when a job runs."""
    code = (
        "import runpy, sys\n"
        "for script, args in [('jobs/caption_dataset.py', ['--help']), ('jobs/summarize_corpus.py', ['--help']),\n"
        "                     ('jobs/finetune.py', ['--help']), ('jobs/caption_dataset.py', ['--validate-only'])]:\n"
        "    sys.argv = [script, *args]\n"
        "    try:\n"
        "        runpy.run_path(script, run_name='__main__')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (script, args, exc.code)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("HEAVY="), out.stdout[-2000:]
