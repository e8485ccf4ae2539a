"""The model server (`fleetpulse serve`): KServe's ModelServer over the stable and candidate SavedModels.

``kserve_model`` is the thin kserve.Model adapter, one per served name; ``saved_model`` loads and runs
one version; ``model_watcher`` follows channels.json on GCS and swaps versions in; ``json_body`` lets
REST JSON requests come without a Content-Type.
"""
