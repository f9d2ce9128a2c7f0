"""skyward-integrations: `sky.integrations.torch`, `.jax`, `.keras`, `.tensorflow`,
`.transformers`, `JoblibPool` and `ScikitLearnPool` for Skyward.
"""
