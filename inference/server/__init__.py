"""The model server (`fleetpulse serve`): KServe's ModelServer over the newest published SavedModel.

``kserve_model`` is the thin kserve.Model adapter; ``saved_model`` loads and runs one version;
``model_watcher`` polls GCS and swaps newer versions in.
"""
