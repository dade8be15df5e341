"""python -m facelite.tools.bench"""

from __future__ import annotations

import sys

# Before anything maps numpy, cv2 or a runtime: RSS is then measured as after boot (see pagecache.py). Not for
# --check, which only reads a report: dropping 1.4 GB of other processes' cached libraries would be for nothing.
from facelite.tools.bench.pagecache import evict_agent_libraries

_CHECK_ONLY = any(a == "--check" or a.startswith("--check=") for a in sys.argv[1:])
_EVICTION = None if _CHECK_ONLY else evict_agent_libraries()

from facelite.tools.bench.cli import main  # noqa: E402

raise SystemExit(main(eviction=_EVICTION))
