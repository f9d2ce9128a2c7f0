"""skyward-digitalocean: the DigitalOcean provider (`sky.DigitalOcean`) for Skyward."""

from skyward_digitalocean.config import DigitalOcean

__all__ = ["DigitalOcean"]
