//! Celery mode on kombu's Redis transport (Redis on 127.0.0.1:6379, database 5), against a real Celery
//! worker (issue 25, done-when 1 and 2). Needs `scripts/install-celery.sh`; fails without
//! Celery or the broker.

mod common;

use common::*;
// Links the backend: `MESSAGING_BACKEND=celery` selects it.
use messaging_celery as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_run_in_a_python_worker() {
    common::events_run_in_a_python_worker(REDIS_URL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tasks_reach_handlers_retry_and_dead_letter() {
    common::python_tasks_reach_handlers(REDIS_URL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_python_tasks_are_handled_none_lost() {
    common::a_thousand_tasks_are_handled(REDIS_URL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_tasks_come_back_after_a_crash() {
    common::unacknowledged_tasks_come_back_after_a_crash(REDIS_URL).await;
}
