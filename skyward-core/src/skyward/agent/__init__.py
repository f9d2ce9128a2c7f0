"""The node side: the agent (``python -m skyward.agent``), its workers and what they share.

The client never imports this package; both sides share only :mod:`skyward.messages`,
:mod:`skyward.wire` and :mod:`skyward.handshake`.
"""
