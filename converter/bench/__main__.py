"""python -m converter.bench"""

from __future__ import annotations

from converter.bench.cli import main

raise SystemExit(main())
