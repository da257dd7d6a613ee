"""Task adapters: one per task kind (see base.py for what an adapter owns)."""

from .base import Modality, TaskAdapter
from .generate import CaptionTask, SummarizeTask
from .label import LabelTask

__all__ = ["CaptionTask", "LabelTask", "Modality", "SummarizeTask", "TaskAdapter"]
