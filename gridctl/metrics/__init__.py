"""Prometheus metrics of a fleet (`gridctl metrics`, `--metrics-addr`).

snapshot.py reads the store (named queries); families.py turns that into metric families (pure);
exporter.py serves or writes them with prometheus_client, which only that module imports.
"""
