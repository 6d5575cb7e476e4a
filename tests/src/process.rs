//! Running built binaries as a team runs them: a plain command with a clean environment, and
//! plain HTTP requests to their `/health` endpoints.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A loopback address nothing listens on.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A plain HTTP GET: (status, body), or `None` when nothing listens yet.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Runs `binary` with `args` and the environment given (and no `MESSAGING_*`/`REDIS_URL` of
/// the test's own), waiting at most 10 s.
pub fn run_plain(
    binary: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String, String, Duration) {
    let started = Instant::now();
    let mut command = Command::new(binary);
    command.args(args).env("RUST_LOG", "info");
    for (key, _) in std::env::vars() {
        if key.starts_with("MESSAGING_")
            || key.starts_with("REDIS_")
            || key.starts_with("KAFKA_")
            || key.starts_with("RABBITMQ_")
        {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err, elapsed)
}
