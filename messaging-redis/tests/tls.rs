//! `rediss://` with a private CA and an ACL user with a password, against a TLS
//! `redis-server` of the test's own (certificates made with the `openssl` command).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use messaging_core::broker::StartFrom;
use messaging_core::{Broker, OutgoingMessage};
use messaging_redis::{RedisBroker, RedisOptions};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the `openssl` command must be installed");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA, and a server certificate for 127.0.0.1 signed by it.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=messaging-test-ca",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    dir
}

struct TlsServer(Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tls_with_a_private_ca_and_an_acl_user() {
    let dir = certificates();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = |name: &str| dir.join(name).display().to_string();
    let _server = TlsServer(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &file("server.crt"),
                "--tls-key-file",
                &file("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &file("ca.crt"),
                "--tls-auth-clients",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("the `redis-server` binary must be installed"),
    );
    let url = |userinfo: &str| {
        format!(
            "rediss://{userinfo}127.0.0.1:{port}/0?tls_ca={}",
            file("ca.crt")
        )
    };

    let mut admin = None;
    for _ in 0..100 {
        if let Ok(broker) = RedisBroker::connect_url(&url("")).await {
            admin = Some(broker);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = admin.expect("the TLS redis-server answers (is redis-server built with TLS?)");
    let _: () = redis_cmd(
        &admin,
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("app")
            .arg("on")
            .arg(">s3cret")
            .arg("~*")
            .arg("&*")
            .arg("+@all"),
    )
    .await;

    let broker = RedisBroker::connect_url(&url("app:s3cret@"))
        .await
        .expect("the ACL user connects over TLS");
    let topic = unique("tls");
    let mut consumer = broker
        .subscribe(subscription("g", &[&topic], StartFrom::Latest))
        .await
        .unwrap();
    broker
        .publish(OutgoingMessage::new(&topic, "over tls"))
        .await
        .unwrap();
    let got = collect(&mut *consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"over tls");

    let wrong = RedisBroker::connect_url(&url("app:wrong@")).await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let shown = format!("{:?}", broker);
    assert!(!shown.contains("s3cret"), "the password leaked: {shown}");
    let untrusted = RedisBroker::connect(
        &format!("rediss://127.0.0.1:{port}/0"),
        RedisOptions::default(),
    )
    .await;
    assert!(
        untrusted.is_err(),
        "the private CA is not trusted without `tls_ca`"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
