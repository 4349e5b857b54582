"""Item SID stores: where the gateway turns beam paths into catalog items (docs in base.py)."""

from service.stores.base import Candidates, SidStore, StoreUnavailable

__all__ = ["Candidates", "SidStore", "StoreUnavailable"]
