"""FleetPulse kernel: the cardata-v1 event contract, codecs, topics, settings, CLI and local stack."""

__version__ = "0.1.0"

import warnings as _warnings

# google-api-core warns on every import that Python 3.11 support ends in 2027; it is noise in a CLI.
_warnings.filterwarnings("ignore", category=FutureWarning, module="google.api_core")
