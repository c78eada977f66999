"""OptFusion model math: supernet, fusion ops, components, STE."""

from trainer.model.supernet import MODES, Supernet, SupernetConfig

__all__ = ["MODES", "Supernet", "SupernetConfig"]
