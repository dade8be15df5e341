"""`python -m facelite --config FILE`: the agent service (same as `facelite-agent`)."""

from facelite.cli import agent_main

raise SystemExit(agent_main())
