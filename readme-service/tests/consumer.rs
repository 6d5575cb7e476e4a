//! The README's service as a user runs it: its `consumer` binary (one `main!` line) links the
//! library's handlers and its broker crate, checks clean, and handles what is published on Redis.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use messaging_core::{Config, configure_messaging};
use order_service::{OrderCreated, UserCreated, sign_up};

const CONSUMER: &str = env!("CARGO_BIN_EXE_consumer");
/// A database of its own, flushed by the test: other tests and people use database 0.
const REDIS_URL: &str = "redis://127.0.0.1:6379/13";

fn consumer(args: &[&str], backend: &str) -> Output {
    Command::new(CONSUMER)
        .args(args)
        .env("MESSAGING_BACKEND", backend)
        .env("REDIS_URL", REDIS_URL)
        .output()
        .expect("the consumer binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn list_shows_the_handlers_of_the_library() {
    let out = consumer(&["list"], "memory");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("order_service::process_payment"),
        "{stdout}"
    );
    assert!(
        stdout.contains("order_service::UserEvents::on_created"),
        "{stdout}"
    );
}

#[test]
fn check_finds_the_handlers_their_state_and_the_redis_broker() {
    // Redis is linked through the library's `use messaging_redis as _;`, and `Db` is registered
    // by the binary's `main!`: `check` would report either one missing.
    for backend in ["memory", "redis"] {
        let out = consumer(&["check"], backend);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: {stdout}{}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("ok: 2 handlers, no problems"),
            "{backend}: {stdout}"
        );
    }
}

/// The consumer and its log; killed if the test fails before stopping it, and then its log
/// is printed.
struct Running(Child, Arc<Mutex<String>>);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!("the consumer's log:\n{}", self.1.lock().unwrap());
        }
    }
}

/// `GET path` on `port`: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits until `done` holds, for at most 30 s.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Empties the test's Redis database, so that the consumer groups start afresh.
fn flush_redis_database() {
    let mut redis = TcpStream::connect("127.0.0.1:6379").expect("Redis listens on 127.0.0.1:6379");
    redis
        .write_all(b"*2\r\n$6\r\nSELECT\r\n$2\r\n13\r\n*1\r\n$7\r\nFLUSHDB\r\n")
        .unwrap();
    let mut replies = BufReader::new(redis);
    for _ in 0..2 {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        assert_eq!(line, "+OK\r\n");
    }
}

#[tokio::test]
async fn the_consumer_handles_what_the_library_publishes_on_redis() {
    flush_redis_database();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = Arc::new(Mutex::new(String::new()));
    let mut running = Running(
        Command::new(CONSUMER)
            .args(["--health-addr", &addr, "--shutdown-timeout", "5s"])
            .env("MESSAGING_BACKEND", "redis")
            .env("REDIS_URL", REDIS_URL)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the consumer binary starts"),
        Arc::clone(&log),
    );
    let stderr = running.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let (lines, printed) = mpsc::channel();
    let stdout = running.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    wait_for("/health/ready", || {
        get(port, "/health/ready").is_some_and(|(code, _)| code == 200)
    });

    configure_messaging(
        Config::default()
            .with_backend("redis")
            .setting("REDIS_URL", REDIS_URL),
    );
    let user = UserCreated {
        id: 7,
        email: "ada@example.com".to_owned(),
    };
    let order = OrderCreated {
        order_id: 1,
        user_id: 7,
        total: 42.5,
    };
    sign_up(&user, &order).await.expect("published on Redis");

    let handled = |topic: &str, handler: &str| {
        format!(
            "messaging_handled_total{{topic=\"{topic}\",handler=\"{handler}\",outcome=\"ok\"}} 1"
        )
    };
    let payment = handled("orders.created", "order_service::process_payment");
    let welcome = handled("user-events", "order_service::UserEvents::on_created");
    wait_for("both messages handled", || {
        get(port, "/metrics").is_some_and(|(_, m)| m.contains(&payment) && m.contains(&welcome))
    });
    let line = printed
        .recv_timeout(Duration::from_secs(10))
        .expect("on_created prints");
    assert_eq!(line, "ada@example.com (attempt 1)");

    // SIGTERM: a graceful stop, exit 0.
    let pid = running.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    wait_for("the consumer to exit", || {
        status = running.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{status:?}");
}
