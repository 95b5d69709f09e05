"""Fine-tuning one expanded model through Hugging Face Accelerate, resumably, with held-out evaluations.

The same code runs in one process or under `accelerate launch` (several CPU processes with gloo here,
GPUs, FSDP or DeepSpeed configs elsewhere). The data order depends only on the seed and the step: the
packed training sequences are permuted once, and optimizer step s reads sequences
[s * batch_size, (s + 1) * batch_size) of that order, split over processes and accumulation micro-steps.
So `batch_size` is the global batch, and a resumed run reads exactly what an uninterrupted one would.

Checkpoints (Accelerate's save_state: weights, optimizer, scheduler, RNG) are written atomically every
checkpoint_every steps and when max_time_s runs out; metrics.jsonl is cut back to the checkpoint on resume.

Modules: config.py (TrainConfig), data.py (packing, data order), evaluation.py, checkpoints.py (RunFolder),
optim.py (what trains at what rate, LoRA), loop.py (train_run), faults.py (the resume tests' kill switch).

Left out: expansion and the comparison across strategies (experiments.py), plots (report.py).
"""

from .checkpoints import SCHEDULER_FILE, RunFolder
from .config import TRAIN_MODES, TrainConfig, TrainMode
from .data import TrainingData, data_order, pack
from .evaluation import Evaluation, evaluate
from .loop import train_run
from .optim import set_trainable

__all__ = ["SCHEDULER_FILE", "TRAIN_MODES", "Evaluation", "RunFolder", "TrainConfig", "TrainMode", "TrainingData", "data_order",
           "evaluate", "pack", "set_trainable", "train_run"]
