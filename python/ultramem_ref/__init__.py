"""PyTorch reference of the UltraMem model (docs MODEL.md): model, checkpoints, random cases."""

from .checkpoint import CheckpointError, load, load_state, save
from .config import make_config, validate
from .model import MemoryLayer, UltraMemModel, top_m

__all__ = ["UltraMemModel", "MemoryLayer", "top_m", "make_config", "validate", "save", "load",
           "load_state", "CheckpointError"]
