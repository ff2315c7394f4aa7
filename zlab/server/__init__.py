"""The local RunComfy-compatible server: the same four endpoints, a job queue, faults, synthetic images.

    LocalServer   run it on a background thread (a context manager): `.base_url`, `.stats`,
                  `.set_faults()`, `.set_quirks()`
    serve         run it in the foreground (`zlab serve`)
    Quirks        which protocol variants of `runcomfy-api.md` it speaks (zlab.server.quirks)
    Faults        what goes wrong and how often (fault injection)
    Regime        how the shared queue behaves: other users, jitter, capacity schedule, cold starts
    Latency       how long a job runs: fixed, or base + per megapixel
    Stats         what the server saw: calls, faults, accepted submits, job times, token leaks

The Starlette app itself is `zlab.server.app.create_app`; the image backend is `zlab.server.synthetic`.
"""

from zlab.server.faults import Faults
from zlab.server.local import LocalServer, serve
from zlab.server.quirks import Quirks
from zlab.server.regime import Regime
from zlab.server.scheduler import Latency, Stats

__all__ = ["Faults", "Latency", "LocalServer", "Quirks", "Regime", "Stats", "serve"]
