"""python -m converter.bench"""

from __future__ import annotations

# Before anything maps numpy, cv2 or a runtime: RSS is then measured as after boot (see pagecache.py).
from converter.bench.pagecache import evict_agent_libraries

_EVICTION = evict_agent_libraries()

from converter.bench.cli import main  # noqa: E402

raise SystemExit(main(eviction=_EVICTION))
