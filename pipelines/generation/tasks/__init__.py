"""Task adapters: one per task kind (see base.py for what an adapter owns)."""

from .base import Modality, TaskAdapter
from .generate import CaptionTask, SummarizeTask

__all__ = ["CaptionTask", "Modality", "SummarizeTask", "TaskAdapter"]
