"""Prefect flows of the ARM stages: what `arm <stage>` runs and what prefect.yaml deploys.

The arm.* module loggers report progress at INFO. Prefect attaches its API handler to them
(`extra_loggers` in prefect.toml for runs started in this directory, PREFECT_LOGGING_EXTRA_LOGGERS
in the deployments' env for runs a worker starts) but leaves their level alone, i.e. Python's
WARNING; every flow run imports this package first, so their level is set here.
"""

import logging

if logging.getLogger("arm").level == logging.NOTSET:
    logging.getLogger("arm").setLevel(logging.INFO)
