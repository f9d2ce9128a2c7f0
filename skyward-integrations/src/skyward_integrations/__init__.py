"""skyward-integrations: distributed-training decorators (``sky.integrations.torch``,
``.jax``, ``.keras``, ``.tensorflow``, ``.transformers``) and the joblib / scikit-learn backend
(``JoblibPool``, ``ScikitLearnPool``, ``joblib_backend``, ``sklearn_backend``) for Skyward.

Users reach everything through ``sky.integrations.<name>``; the names are registered by
:mod:`skyward_integrations.plugin`. Importing this package imports no framework.
"""
