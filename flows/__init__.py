"""Prefect flows of the ARM stages: what `arm <stage>` runs and what prefect.yaml deploys.

The arm.* module loggers report progress at INFO. Prefect attaches its API handler to them
(`extra_loggers` in prefect.toml for runs started in this directory, PREFECT_LOGGING_EXTRA_LOGGERS
in the deployments' env for runs a worker starts) but leaves their level alone, i.e. Python's
WARNING; every flow run imports this package first, so their level is set here, and the Hugging
Face bars are switched off when a worker runs the flow off a terminal (as the `arm` CLI does).
"""

import logging

from arm.progress import quiet_other_bars

quiet_other_bars()

if logging.getLogger("arm").level == logging.NOTSET:
    logging.getLogger("arm").setLevel(logging.INFO)
