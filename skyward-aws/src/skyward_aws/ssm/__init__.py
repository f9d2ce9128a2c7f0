"""Session Manager connectivity (``AWS(use_ssm=True)``), with no session-manager-plugin.

SSH runs inside a Session Manager port session to the node's port 22, so the host key
is still pinned and the per-pool key still used, while nothing listens publicly: the
node needs no inbound rule and no public address, only the SSM agent and a role.
"""

from skyward_aws.ssm.tunnel import open_tunnel

__all__ = ["open_tunnel"]
