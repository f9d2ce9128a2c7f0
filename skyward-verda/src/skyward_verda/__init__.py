"""skyward-verda: the Verda provider (`sky.Verda`) for Skyward."""

from skyward_verda.config import Verda

__all__ = ["Verda"]
