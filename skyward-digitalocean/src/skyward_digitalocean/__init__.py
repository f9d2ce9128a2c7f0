"""skyward-digitalocean: the DigitalOcean provider (`sky.DigitalOcean`) for Skyward."""
