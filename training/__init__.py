"""Offline side of sidserve: data, models, training and evaluation."""
