"""skyward-verda: the Verda provider (`sky.Verda`) for Skyward."""
