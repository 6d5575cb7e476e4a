//! A frozen broker (`kill -STOP`) is noticed through the heartbeat, so `/health/ready` can
//! report the group (issue 21). The shared RabbitMQ is not frozen: a TCP relay in the test
//! forwards to it and can stop forwarding, as a stopped process would (connections stay
//! open, nothing is read or written, new ones are accepted and never answered).
//! Needs RabbitMQ on 127.0.0.1:5672 and `rabbitmqctl`.

mod common;

use std::time::{Duration, Instant};

use common::{Names, rabbitmqctl};
use messaging_core::{Broker, OutgoingMessage, StartFrom, Subscription};
use messaging_rabbit::{RabbitBroker, RabbitOptions};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A relay to the local RabbitMQ that can be frozen.
struct Relay {
    port: u16,
    frozen: watch::Sender<bool>,
}

impl Relay {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = watch::channel(false);
        let accepting = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, accepting.subscribe()));
            }
        });
        Self { port, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

async fn forward(client: TcpStream, frozen: watch::Receiver<bool>) {
    if *frozen.borrow() {
        // Accepted by the kernel, never answered.
        return hold(client).await;
    }
    let upstream = TcpStream::connect("127.0.0.1:5672")
        .await
        .expect("RabbitMQ listens on 127.0.0.1:5672");
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    tokio::join!(
        pump(&mut client_read, &mut upstream_write, frozen.clone()),
        pump(&mut upstream_read, &mut client_write, frozen),
    );
}

async fn until_frozen(frozen: &mut watch::Receiver<bool>) {
    // An error means the relay is gone: idle for ever as well.
    let _ = frozen.wait_for(|f| *f).await;
}

/// Keeps `held` open and idle for ever.
async fn hold<T>(held: T) {
    std::future::pending::<()>().await;
    drop(held);
}

/// Copies until either side closes; once frozen, holds both sides open and idle for ever.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        tokio::select! {
            () = until_frozen(&mut frozen) => break,
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_fails_next_batch_within_two_heartbeats() {
    let n = Names::new("frozen");
    let direct = n.broker().await;
    let relay = Relay::start().await;
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=1&connection_timeout=1000",
        relay.port
    );
    let options = RabbitOptions::new(url)
        .connection_name(n.connection())
        .reconnect(2, Duration::from_millis(100), Duration::from_secs(1))
        .queue_expires(Duration::from_secs(300));
    let relayed = RabbitBroker::connect(options).await.unwrap();
    let (topic, group) = (n.topic("frozen"), n.group("frozen"));
    let mut consumer = relayed
        .subscribe(Subscription {
            group: group.clone(),
            topics: vec![topic.clone()],
            start: StartFrom::Latest,
            prefetch: 10,
        })
        .await
        .unwrap();
    direct
        .publish(OutgoingMessage::new(&topic, "before"))
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), consumer.next_batch(10))
        .await
        .expect("a message through the relay")
        .unwrap();
    assert_eq!(&batch[0].payload[..], b"before");
    consumer.acker().ack(&batch[0]).await.unwrap();

    relay.freeze();
    let frozen_at = Instant::now();
    let waiting = tokio::time::timeout(Duration::from_secs(15), consumer.next_batch(10)).await;
    let error = match waiting {
        Ok(Err(error)) => error,
        Ok(Ok(batch)) => panic!("{} messages from a frozen broker", batch.len()),
        Err(_) => panic!("next_batch still waits 15 s after the broker froze"),
    };
    let noticed = frozen_at.elapsed();
    assert!(
        noticed < Duration::from_secs(6),
        "a 1 s heartbeat noticed the freeze only after {noticed:?}: {error}"
    );

    // Reconnecting cannot finish either: the handshake's timeout bounds each attempt, and the
    // attempts end in an error when the cooldown starts, instead of waiting for ever.
    let again = tokio::time::timeout(Duration::from_secs(15), consumer.next_batch(10)).await;
    match again {
        Ok(Err(error)) => assert!(error.to_string().contains("handshake"), "{error}"),
        Ok(Ok(batch)) => panic!("{} messages from a frozen broker", batch.len()),
        Err(_) => panic!("reconnecting to a frozen broker still waits after 15 s"),
    }
    direct
        .delete_queue(&direct.group_queue(&group).unwrap())
        .await
        .unwrap();
}

/// With no `heartbeat` in the URL, connections ask for 10 s (RabbitMQ would otherwise
/// impose its 60 s, and a frozen broker would go unnoticed for two minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_use_a_10_s_heartbeat_unless_the_url_sets_one() {
    let n = Names::new("heartbeat");
    let _default = n.broker().await;
    let other = Names::new("heartbeat-url");
    let url = format!("{}?heartbeat=7", common::URL);
    let _set = RabbitBroker::connect(RabbitOptions::new(url).connection_name(other.connection()))
        .await
        .unwrap();
    let timeouts = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&[
            "-q",
            "list_connections",
            "--no-table-headers",
            "timeout",
            "client_properties",
        ])
    })
    .await
    .unwrap();
    let timeout_of = |fragment: &str| -> String {
        let line = timeouts
            .lines()
            .find(|line| line.contains(fragment))
            .unwrap_or_else(|| panic!("no connection named {fragment}:\n{timeouts}"));
        line.split('\t').next().unwrap().trim().to_owned()
    };
    assert_eq!(timeout_of(&n.id), "10");
    assert_eq!(timeout_of(&other.id), "7");
}
