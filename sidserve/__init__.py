"""sidserve: hierarchical semantic IDs for queries and products.

This package holds only the `sidserve` command-line entry point. The work lives in `training`
(offline, torch), `export` (checkpoint -> bundle) and `service` (the gateway, no torch); the
entry point imports only the subcommand that runs, so `sidserve serve` never loads torch.
"""

__version__ = "0.1.0"
