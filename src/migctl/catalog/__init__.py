"""The MIG hardware catalog: every MIG GPU model, its GI/CI profiles, IDs and placements, with sources.

Pure logic plus the data files under ``data/``; no device access.
"""

from migctl.catalog.loader import CatalogError, all_models, load_model, model_by_pci_id, model_keys
from migctl.catalog.model import (
    CIProfile,
    GIProfile,
    GpuModel,
    Placement,
    memory_size_gb,
    parse_driver,
    profile_name,
)

__all__ = [
    "CIProfile",
    "CatalogError",
    "GIProfile",
    "GpuModel",
    "Placement",
    "all_models",
    "load_model",
    "memory_size_gb",
    "model_by_pci_id",
    "model_keys",
    "parse_driver",
    "profile_name",
]
