"""alignlab: the whole alignment pipeline of a language model, one swappable stage at a time."""

import os

# Tracking must never need the network unless the user asks for it.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
