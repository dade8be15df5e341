"""`python -m facelite.deploy`: see deploy/cli.py."""

from __future__ import annotations

from facelite.deploy.cli import main

raise SystemExit(main())
