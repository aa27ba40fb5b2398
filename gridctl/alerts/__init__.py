"""Alert hooks (fleet spec `alerts:`): batches of events POSTed to webhooks or piped to commands
after each pass, retried with backoff across passes, recorded per event and hook in the store.

`rules.py` decides (pure), `send.py` sends, `deliver.py` runs a round and the loop's worker.
Imported lazily by reconcile/loop.py, only when the fleet has hooks.
"""
