"""Running sweeps: the sweep and its file, the run directory's ledger and lock, the runner, its result,
progress and picks. Built on `zlab.api` and `zlab.core`; knows nothing of sheets or widgets."""
