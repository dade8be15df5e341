"""`python -m deploy`: see deploy/cli.py."""

from __future__ import annotations

from deploy.cli import main

raise SystemExit(main())
