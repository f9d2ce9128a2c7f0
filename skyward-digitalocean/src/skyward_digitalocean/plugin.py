"""Entry point of skyward-digitalocean (group ``skyward``, name ``digitalocean``).

This package will register the DigitalOcean provider (`sky.DigitalOcean`) through Skyward's
hooks. Until it does, it registers nothing, and Skyward reports the name as provided by no
installed plugin.
"""
