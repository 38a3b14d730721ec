"""Weight conversion between arlm and other formats (name-map dicts, no code from files)."""

from .x_transformers import convert_state_dict

__all__ = ["convert_state_dict"]
