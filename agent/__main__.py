"""`python -m agent --config FILE`: the agent service (same as `facelite-agent`)."""

from agent.cli import agent_main

raise SystemExit(agent_main())
