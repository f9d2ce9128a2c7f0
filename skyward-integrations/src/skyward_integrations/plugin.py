"""Entry point of skyward-integrations (group ``skyward``, name ``integrations``).

This package will register `sky.integrations.torch`, `.jax`, `.keras`, `.tensorflow`,
`.transformers`, `JoblibPool` and `ScikitLearnPool` through Skyward's hooks. Until it does, it
registers nothing, and Skyward reports the name as provided by no installed plugin.
"""
