"""The SSH transport every remote provider uses: hosts, keys, connections, bootstrap."""
