"""clip-ping: lightweight CLIP models trained with neighbour guidance (CLIP-PING)."""

from .models import create_model, list_models, load
from .tokenizer import get_tokenizer, train_tokenizer

__all__ = ["create_model", "get_tokenizer", "list_models", "load", "train_tokenizer"]
__version__ = "0.1.0"
