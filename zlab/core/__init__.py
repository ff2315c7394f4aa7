"""The pure core: the request schema, axes, prices, retry and polling policy, the run plan, protocol reading,
settings and the results table's conventions. No network, no event loop; everything here is a decision."""
