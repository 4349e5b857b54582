"""The online gateway: reads bundles, never imports torch, `training/` or `export/`."""
