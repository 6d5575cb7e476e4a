use messaging_core::testing::TestHarness;
use order_service::{Db, OrderCreated};

#[tokio::test(start_paused = true)]
async fn a_negative_total_is_retried_then_dead_lettered() {
    let harness = TestHarness::builder().state(Db).start().await.unwrap();
    let ok = OrderCreated {
        order_id: 1,
        user_id: 7,
        total: 9.5,
    };
    let bad = OrderCreated {
        order_id: 2,
        user_id: 7,
        total: -1.0,
    };
    harness.send("orders.created", &ok).await.unwrap();
    harness.send("orders.created", &bad).await.unwrap();
    harness.wait_idle().await; // 15 s of back-off, in no time

    assert_eq!(harness.succeeded("process_payment"), 1);
    let records = harness.dlq("orders.created");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].attempts, 4);
    assert_eq!(records[0].error.message, "negative total");
    harness.shutdown().await;
}
