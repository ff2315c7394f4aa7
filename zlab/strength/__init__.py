"""Where a LoRA acts: onset, saturation and overcook per LoRA, and an adaptive search that finds them.

- `definitions`: the definitions on measured change and detail, thresholds as parameters (pure);
- `search`: which scale to probe next (pure);
- `measure`: the built-in, cheap image measures (pixel change to the baseline, fine detail);
- `driver`: `find_scale`, which runs the probes through a client into a run directory.

`import zlab.strength` stays light: the driver's imports wait until it is used.
"""

from zlab.strength.definitions import Diagnosis, Finding, Probe, Thresholds, diagnose
from zlab.strength.search import SearchSpace, next_scale

__all__ = ["Diagnosis", "Finding", "Probe", "SearchSpace", "Thresholds", "diagnose", "next_scale"]
