"""An example third-party Skyward provider (used by Skyward's own tests)."""

from skyward_example_provider.plugin import Example

__all__ = ["Example"]
