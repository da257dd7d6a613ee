"""Fine-tune a combiner on Ray Train (TorchTrainer + DDP) and export it in the HF layout.

    python jobs/finetune.py --spec jobs/specs/finetune_demo_captioner.yaml [--set KEY=VALUE ...]
    ray job submit --working-dir . -- python jobs/finetune.py --spec jobs/specs/finetune_demo_captioner.yaml

Started again with the same spec (run.name + run.storage_path), a killed run
resumes from its latest checkpoint. The demo spec needs `python jobs/make_demo_data.py`
first.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/x.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from pipelines import SpecError, absolute_spec_paths, job_arg_parser, load_spec, spec_yaml  # noqa: E402
from pipelines.finetune import FinetuneSpec, preflight, run_finetune_plan  # noqa: E402

DEFAULT_SPEC = Path(__file__).resolve().parent / "specs" / "finetune_demo_captioner.yaml"


def main(argv: list[str] | None = None) -> int:
    args = job_arg_parser(__doc__.splitlines()[0], example_set="training.epochs=2",
                          exit_codes="exit codes: 0 done; 2 fix the spec (nothing was started)").parse_args(argv)
    try:
        spec = load_spec(FinetuneSpec, args.spec or DEFAULT_SPEC, args.overrides)
        if args.print_spec:
            print(spec_yaml(absolute_spec_paths(spec), header=f"{__doc__.splitlines()[0]}\nA spec for jobs/finetune.py: "
                            "save it, edit it, run it with --spec FILE. Relative paths in it are relative to the "
                            "file's folder."), end="")
            return 0
        checked = preflight(spec, source=args.spec or str(DEFAULT_SPEC))
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_only:
        for line in checked.checked:
            print(f"checked: {line}")
        return 0
    started = time.time()
    try:
        result = run_finetune_plan(checked.plan)
    except SpecError as exc:  # found once Ray's size or the rows are known; nothing was trained
        print(exc, file=sys.stderr)
        return 2
    m = result.metrics
    print(f"\n== finetune {spec.run.name}: done in {time.time() - started:.0f} s ==")
    if result.resumed_from_step is not None:
        print(f"resumed from step {result.resumed_from_step}")
    print(f"steps: {m.get('step')}  epochs: {m.get('epoch')}")
    first = next((h for h in result.history if h.get("eval_loss") is not None), None)
    if first is not None:
        print(f"eval loss: {first['eval_loss']:.4f} (step {first['step']}) -> {m.get('eval_loss'):.4f}")
    for split in ("eval", "test"):
        scores = {k[len(split) + 1 :]: v for k, v in m.items() if k.startswith(split + "_") and isinstance(v, float)}
        if scores:
            print(f"{split}: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(scores.items())))
    print(f"skipped rows: {json.dumps(m.get('skipped_rows', {}))}")
    print(f"exported to {result.export_uri} (model, loss_curve.png, metrics.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
