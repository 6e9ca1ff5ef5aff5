"""The celery app of the weekly job's workers (issue 22 item 5; docs/deploy.md).

A worker host runs, in this project's environment (same virtualenv or image, the repo root as
its working directory) and with the run environment (`LENS_CELERY_BROKER`, `DATA_SOURCE`,
`LENS_DATA_DIR`, `LENS_*`, `DAGSTER_HOME` and `DAGSTER_PG_*`):

    celery -A resources.celery_app worker -n w1@%h --concurrency 1 --prefetch-multiplier 1

The app is dagster-celery's (`make_app`, its `execute_plan` task, the `dagster` queue) built
from `resources.launch.celery_app_args`, which is what the run worker's executor builds when
`LENS_EXECUTOR=celery`: both read the broker and the result backend from the same variables,
so a worker and the runs it serves cannot disagree on them. The worker imports the code
location's packages (`include`) before it forks its pool, so a task does not import them again.
Needs the `celery` extra (dagster-celery, celery, redis).
"""

from __future__ import annotations

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from resources.launch import celery_app_args

app = make_app(celery_app_args())
execute_plan = create_task(app)
