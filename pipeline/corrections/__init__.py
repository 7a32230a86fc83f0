"""Correction payloads: loaded once per worker process, looked up with clear errors."""

from pipeline.corrections.loader import (
    file_checksum,
    get_compound,
    get_correction,
    load_correction_set,
)

__all__ = ["file_checksum", "get_compound", "get_correction", "load_correction_set"]
