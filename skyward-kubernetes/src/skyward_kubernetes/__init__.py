"""Skyward's Kubernetes provider: ``sky.Kubernetes(...)`` runs a pool as pods."""

from skyward_kubernetes.config import Kubernetes

__all__ = ["Kubernetes"]
