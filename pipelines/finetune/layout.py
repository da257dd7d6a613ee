"""What a fine-tuning checkpoint folder holds (shared by the trainer and the export).

    model/              the combiner, saved with combiner_core.save_combiner
    optimizer.pt        AdamW and scheduler state (tensors only: loaded weights_only)
    trainer_state.json  step, epoch, batches done in the epoch, loss history, skipped rows
    metrics.json        the metrics reported with this checkpoint
"""

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
MODEL_DIR = "model"
METRICS_FILE = "metrics.json"
