"""Image taggers: text tags for the prompt and embeddings for the image cross-attention."""

from .base import Tagger
from .checkpoint import RAMFileError
from .ram import RAMConfig, RAMTagger

__all__ = ["RAMConfig", "RAMFileError", "RAMTagger", "Tagger"]
