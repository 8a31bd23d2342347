"""Image taggers: text tags for the prompt and embeddings for the image cross-attention."""

from .base import Tagger, tags_and_embeddings
from .checkpoint import RAMFileError
from .ram import RAMConfig, RAMTagger

__all__ = ["RAMConfig", "RAMFileError", "RAMTagger", "Tagger", "tags_and_embeddings"]
