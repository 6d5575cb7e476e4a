//! Issue 24, done-when 5 on the memory broker: an HTTP client retrying `POST /orders` with the
//! same `Idempotency-Key` produces one payment. The `#[event]` handler publishes a new envelope
//! on every call (a new order each time); the request's key travels as `x-idempotency-key` and
//! the idempotent payments handler runs once for it. `idempotency_key = "field"` does the same
//! from the data.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use messaging_core::message::header;
use messaging_core::metrics::metrics;
use messaging_core::prelude::*;
use messaging_core::testing::TestHarness;
use messaging_core::{HandlerSpec, Invocation, install_producer};
use serde::{Deserialize, Serialize};
use tower::ServiceExt as _;

const ORDERS: &str = "idem-http.orders";
const CHECKOUTS: &str = "idem-http.checkouts";

static NEXT_ORDER: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize)]
struct NewOrder {
    total: f64,
}

#[derive(Serialize)]
struct OrderOut {
    id: u64,
    total: f64,
}

#[event("order.created", topic = "idem-http.orders")]
async fn create_order(
    Json(body): Json<NewOrder>,
) -> Result<(StatusCode, Json<OrderOut>), StatusCode> {
    let id = NEXT_ORDER.fetch_add(1, Ordering::SeqCst);
    Ok((
        StatusCode::CREATED,
        Json(OrderOut {
            id,
            total: body.total,
        }),
    ))
}

#[derive(Serialize, Deserialize)]
struct Checkout {
    cart_id: String,
}

#[event(
    "checkout.started",
    topic = "idem-http.checkouts",
    idempotency_key = "cart_id"
)]
async fn checkout(Json(body): Json<Checkout>) -> Result<Json<Checkout>, StatusCode> {
    Ok(Json(body))
}

fn app() -> axum::Router {
    axum::Router::new()
        .route("/orders", post(create_order))
        .route("/checkouts", post(checkout))
        .layer(axum::middleware::from_fn(
            messaging_core::trace::http_middleware,
        ))
}

async fn post_json(uri: &str, body: &str, idempotency_key: Option<&str>) -> StatusCode {
    let mut request = Request::post(uri).header("content-type", "application/json");
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let request = request.body(Body::from(body.to_owned())).unwrap();
    app().oneshot(request).await.unwrap().status()
}

fn counting(name: &str, topic: &str, runs: &Arc<AtomicUsize>) -> HandlerSpec {
    let runs = Arc::clone(runs);
    HandlerSpec::new(name, [topic], move |_inv: Invocation| {
        runs.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    })
    .idempotent(true)
}

#[tokio::test]
async fn a_client_retrying_post_orders_with_one_idempotency_key_pays_once() {
    let payments = Arc::new(AtomicUsize::new(0));
    let checkouts = Arc::new(AtomicUsize::new(0));
    let harness = TestHarness::builder()
        .runtime(|r| {
            r.without_registered()
                .handler(counting("pay", ORDERS, &payments))
                .handler(counting("reserve", CHECKOUTS, &checkouts))
        })
        .start()
        .await
        .unwrap();
    install_producer(harness.producer().clone());
    let settle = || async {
        get_producer()
            .flush_within(Duration::from_secs(5))
            .await
            .unwrap();
        harness.wait_idle().await;
    };

    // The client retries twice after timeouts: three requests, one key.
    for _ in 0..3 {
        let status = post_json("/orders", r#"{"total": 9.5}"#, Some("client-req-1")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    settle().await;
    let published = harness.broker().messages(ORDERS);
    assert_eq!(published.len(), 3, "each request publishes its event");
    assert!(
        published
            .iter()
            .all(|m| m.header(header::IDEMPOTENCY_KEY) == Some("client-req-1"))
    );
    assert_eq!(payments.load(Ordering::SeqCst), 1, "one payment");
    assert_eq!(metrics().duplicates(ORDERS, "pay"), 2);

    // Requests without the header are separate orders: each is paid.
    for _ in 0..2 {
        assert_eq!(
            post_json("/orders", r#"{"total": 1.0}"#, None).await,
            StatusCode::CREATED
        );
    }
    settle().await;
    assert_eq!(payments.load(Ordering::SeqCst), 3);

    // `idempotency_key = "cart_id"`: the data's field is the key.
    for _ in 0..2 {
        assert_eq!(
            post_json("/checkouts", r#"{"cart_id": "cart-9"}"#, None).await,
            StatusCode::OK
        );
    }
    settle().await;
    let published = harness.broker().messages(CHECKOUTS);
    assert_eq!(published.len(), 2);
    assert!(
        published
            .iter()
            .all(|m| m.header(header::IDEMPOTENCY_KEY) == Some("cart-9"))
    );
    assert_eq!(checkouts.load(Ordering::SeqCst), 1);
    assert_eq!(metrics().duplicates(CHECKOUTS, "reserve"), 1);
    harness.shutdown().await;
}
