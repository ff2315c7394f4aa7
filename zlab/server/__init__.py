"""The local RunComfy-compatible server: the same four endpoints, a job queue, faults, synthetic images.

    LocalServer   run it on a background thread (a context manager): `.base_url`, `.stats`, `.set_faults()`
    serve         run it in the foreground (`zlab serve`)
    Faults        what goes wrong and how often (fault injection)
    Latency       how long a job runs: fixed, or base + per megapixel
    Stats         what the server saw: calls, faults, accepted submits, job times

The Starlette app itself is `zlab.server.app.create_app`; the image backend is `zlab.server.synthetic`.
"""

from zlab.server.faults import Faults
from zlab.server.local import LocalServer, serve
from zlab.server.scheduler import Latency, Stats

__all__ = ["Faults", "Latency", "LocalServer", "Stats", "serve"]
