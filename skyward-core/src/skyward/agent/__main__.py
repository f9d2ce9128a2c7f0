"""``python -m skyward.agent``: start a node agent."""

from skyward.agent.server import main

main()
