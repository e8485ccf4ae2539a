"""Submit the compiled FleetPulse training pipeline to Kubeflow Pipelines once; a CronJob runs it nightly.

Mounted from a ConfigMap into the training image (which carries the KFP SDK and
/opt/fleetpulse/kubeflow/pipeline.yaml). Settings come from the environment:

  KFP_HOST              KFP API, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888
  KFP_EXPERIMENT        experiment to file the run under (default "fleetpulse")
  PIPELINE_PACKAGE      compiled pipeline (default /opt/fleetpulse/kubeflow/pipeline.yaml)
  PIPELINE_ARGUMENTS    JSON object of run arguments; keys the pipeline does not declare are dropped
                        with a note, so one CronJob spec survives pipeline signature changes.
  PIPELINE_SERVICE_ACCOUNT  Kubernetes service account the run's pods use (FleetPulse's own, bound to
                        the model-publishing Google service account); unset: KFP's default.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_PACKAGE = "/opt/fleetpulse/kubeflow/pipeline.yaml"


def declared_parameters(package_text: str) -> set[str]:
    """Names of the pipeline's root input parameters in a compiled KFP v2 IR YAML."""
    import yaml

    docs = [d for d in yaml.safe_load_all(package_text) if d]
    spec = docs[0]
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return set(params)


def run_arguments(requested: dict, declared: set[str]) -> tuple[dict, list[str]]:
    """Split requested arguments into those the pipeline declares and the names it does not."""
    kept = {k: v for k, v in requested.items() if k in declared}
    dropped = sorted(set(requested) - declared)
    return kept, dropped


def main() -> int:
    import kfp

    package = Path(os.environ.get("PIPELINE_PACKAGE", DEFAULT_PACKAGE))
    requested = json.loads(os.environ.get("PIPELINE_ARGUMENTS", "{}"))
    arguments, dropped = run_arguments(requested, declared_parameters(package.read_text()))
    if dropped:
        print(f"pipeline does not declare {', '.join(dropped)}; not passed", file=sys.stderr)
    client = kfp.Client(host=os.environ["KFP_HOST"])
    run_name = "car-anomaly-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    result = client.create_run_from_pipeline_package(
        str(package),
        arguments=arguments,
        run_name=run_name,
        experiment_name=os.environ.get("KFP_EXPERIMENT", "fleetpulse"),
        enable_caching=False,
        service_account=os.environ.get("PIPELINE_SERVICE_ACCOUNT") or None,
    )
    print(f"submitted {run_name}: run id {result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
