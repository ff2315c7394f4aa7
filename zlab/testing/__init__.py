"""Tools for testing and benchmarking zlab and code built on it (as `starlette.testing`): a discrete-event
queue simulator for pollers (`queuesim`) and a tiny random Z-Image pipeline (`tiny_zimage`, needs `[local]`)."""
