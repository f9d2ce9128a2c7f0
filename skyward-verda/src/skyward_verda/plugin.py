"""Entry point of skyward-verda (group ``skyward``, name ``verda``).

This package will register the Verda provider (`sky.Verda`) through Skyward's hooks. Until it
does, it registers nothing, and Skyward reports the name as provided by no installed plugin.
"""
