"""Run a parameterised notebook with papermill and render it to HTML: `zlab report`.

Modules by concept: `run` (papermill in a child, deadlines, failures), `params` (checks), `kernel`, `html`
(the offline page), `scrub` (secrets).

>>> rep = report("notebooks/lora_scale_sweep.ipynb", {"seeds": [5, 6], "prompt": "a fox"})  # doctest: +SKIP
>>> rep.ok, rep.html                                                                   # doctest: +SKIP
(True, PosixPath('reports/lora-scale-20250101T120000Z/lora-scale.html'))

What happens, in order:

1. Parameter names are checked against the notebook's cell tagged `parameters` (an unknown name is a
   `ValidationError` listing the valid ones). Names that look like secrets (token, api_key, secret,
   password) are refused: papermill writes parameters into the notebook, so the RunComfy token must come
   from the environment (`RUNCOMFY_TOKEN`), which the kernel inherits.
2. The notebook runs in a kernel for *this* interpreter (`sys.executable`), in a child process so that
   the overall deadline can stop it cleanly, with the notebook's own folder as working directory (so
   relative paths in it mean what they mean when you open it in Jupyter; `cwd=` changes that).
3. The executed `.ipynb` and its HTML rendering (images embedded as data URIs) are written to `out`,
   by default `reports/<notebook stem>-<UTC timestamp>/`. A failed run keeps both.
4. Both files are scanned for the values of `RUNCOMFY_TOKEN` / `RUNCOMFY_API_KEY` (raw, base64, escaped);
   any hit is replaced by `**********` and a warning says so. The token never reaches these files
   through zlab; the scan catches a notebook that prints it.
"""

from zlab.report.kernel import kernel_for_current_python
from zlab.report.params import parse_param_pairs
from zlab.report.run import Report, report

__all__ = ["Report", "kernel_for_current_python", "parse_param_pairs", "report"]
