//! Opening AMQP connections, and the pacing of reconnection attempts (DESIGN §5): up to
//! `connect_max_retries` attempts `connect_retry_delay` apart, then a `connect_cooldown`.
//! Recovery is done here rather than by lapin's auto-recovery so the pacing follows the
//! framework's configuration and every channel, declaration and consumer is rebuilt by the
//! same code that built it first.
//!
//! The URL is checked before any attempt, and a broker's refusal of the virtual host or the
//! credentials is told apart from an unreachable broker: those can never work, so they are
//! configuration errors that end the connect loop instead of being retried for ever.

use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};
use messaging_core::config::mask_url;
use tokio::time::Instant;

use crate::error::RabbitError;
use crate::options::RabbitOptions;

/// The heartbeat (seconds) asked for when the URL sets none (`?heartbeat=`). Without one,
/// RabbitMQ's 60 s applies and a frozen broker (`kill -STOP`, a link that drops packets
/// silently) goes unnoticed for two minutes, while a consumer waits for deliveries that
/// never come; lapin closes a connection that heard nothing for two heartbeats.
pub(crate) const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// How long the TCP connection and the AMQP handshake may take when the URL sets no
/// `connection_timeout` (milliseconds): a frozen broker accepts TCP connections (the kernel
/// does) and then never answers.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the URL should look like, for error messages.
const EXPECTED: &str =
    "expected amqp://user:password@host:5672/vhost (the vhost URL-encoded, %2f for /)";

/// Parses and checks `url`, and sets the default heartbeat when it sets none. Every error
/// is [`RabbitError::Config`], with the password masked.
pub(crate) fn amqp_uri(url: &str) -> Result<AMQPUri, RabbitError> {
    let url = url.trim();
    let masked = masked(url);
    let invalid = |why: String| RabbitError::Config(format!("`{masked}` {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(format!("is not a URL; {EXPECTED}")));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "amqp" => {}
        "amqps" => {
            return Err(invalid(
                "asks for TLS (amqps://), which messaging-rabbit is built without; use amqp://"
                    .to_owned(),
            ));
        }
        other => {
            return Err(invalid(format!(
                "has the scheme `{other}`, not amqp; {EXPECTED}"
            )));
        }
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]:5672`.
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(invalid(format!("names no host; {EXPECTED}")));
    }
    let mut uri: AMQPUri = url.parse().map_err(|error: String| {
        // The parser's message may quote the URL, password included.
        invalid(format!("does not parse: {}", error.replace(url, &masked)))
    })?;
    if host_port.starts_with('[') {
        // The parser keeps domain names only and would put `localhost` in place of an IP
        // literal: connect where the URL says.
        host.clone_into(&mut uri.authority.host);
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
    }
    Ok(uri)
}

/// `url` fit for a message: the password masked, and for something that is not even a URL
/// (`amqp:user:password@host`), all that comes before the last `@`.
fn masked(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) if !url.contains("://") => format!("***@{host}"),
        _ => mask_url(url),
    }
}

/// Opens one connection named `<prefix> <role>` (the name `rabbitmqctl list_connections
/// client_properties` and the management UI show).
pub(crate) async fn open(options: &RabbitOptions, role: &str) -> Result<Connection, RabbitError> {
    let uri = amqp_uri(&options.url)?;
    let timeout = uri
        .query
        .connection_timeout
        .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_millis);
    let user = uri.authority.userinfo.username.clone();
    let vhost = uri.vhost.clone();
    let name = format!("{} {role}", options.connection_name);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(timeout, Connection::connect_uri(uri, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(refused(error, &options.url, &user, &vhost)),
        Err(_) => Err(RabbitError::HandshakeTimeout(timeout)),
    }
}

/// A refusal that no retry can fix as a configuration error, anything else as it is.
fn refused(error: lapin::Error, url: &str, user: &str, vhost: &str) -> RabbitError {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return error.into();
    };
    let masked = masked(url);
    let said = amqp.get_message().as_str();
    match amqp.kind() {
        // RabbitMQ's answer to `connection.open` for a virtual host that does not exist or
        // that the user has no permission on.
        AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => RabbitError::Config(format!(
            "`{masked}`: the broker refuses virtual host `{vhost}` to user `{user}` ({said}); create it (rabbitmqctl add_vhost) and grant the user permissions, or fix the URL's path (%2f for /)"
        )),
        // Wrong user or password: as permanent as a missing virtual host.
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => RabbitError::Config(format!(
            "`{masked}`: the broker refuses the credentials of user `{user}` ({said}); check the user name and password"
        )),
        _ => error.into(),
    }
}

/// When the next connection attempt may be made.
#[derive(Debug, Default)]
pub(crate) struct RetryGate {
    failures: u32,
    not_before: Option<Instant>,
    last_error: String,
}

impl RetryGate {
    /// How long until the next attempt is allowed (zero when it is).
    pub(crate) fn wait(&self) -> Duration {
        self.not_before
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// Records a failed attempt; returns whether a cooldown starts.
    pub(crate) fn failed(&mut self, options: &RabbitOptions, error: &RabbitError) -> bool {
        self.failures += 1;
        self.last_error = error.to_string();
        let cooldown = self.failures >= options.connect_max_retries.max(1);
        let pause = if cooldown {
            self.failures = 0;
            options.connect_cooldown
        } else {
            options.connect_retry_delay
        };
        self.not_before = Some(Instant::now() + pause);
        cooldown
    }

    /// Records a successful attempt.
    pub(crate) fn succeeded(&mut self) {
        *self = Self::default();
    }

    /// The error to report while attempts are paused.
    pub(crate) fn waiting(&self) -> RabbitError {
        RabbitError::Waiting {
            wait: self.wait(),
            last: self.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_10_s_unless_the_url_sets_one() {
        let uri = amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.authority.host, "127.0.0.1");
        let uri = amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=30").unwrap();
        assert_eq!(uri.query.heartbeat, Some(30));
    }

    #[test]
    fn an_ip_literal_is_kept_as_the_host() {
        let uri = amqp_uri("amqp://guest:guest@[fd00::5]:5672/%2f").unwrap();
        assert_eq!(uri.authority.host, "fd00::5");
        assert_eq!(uri.authority.port, 5672);
        let uri = amqp_uri("AMQP://rabbit.internal/%2f").unwrap();
        assert_eq!(uri.authority.host, "rabbit.internal");
    }

    #[test]
    fn errors_never_show_the_password() {
        for url in [
            "amqp:secret@host",
            "http://user:secret@host/",
            "amqp://user:secret@/x",
            "amqp://user:secret@host:123456/",
            "amqp://user:secret@host/?channel_max=x",
        ] {
            let error = amqp_uri(url).unwrap_err();
            assert!(matches!(error, RabbitError::Config(_)), "{url}: {error}");
            assert!(!error.to_string().contains("secret"), "{url}: {error}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_then_cools_down() {
        let options = RabbitOptions::new("amqp://127.0.0.1:1/%2f").reconnect(
            3,
            Duration::from_secs(2),
            Duration::from_secs(30),
        );
        let error = RabbitError::ChannelClosed;
        let mut gate = RetryGate::default();
        assert_eq!(gate.wait(), Duration::ZERO);
        assert!(!gate.failed(&options, &error));
        assert_eq!(gate.wait(), Duration::from_secs(2));
        assert!(!gate.failed(&options, &error));
        assert!(
            gate.failed(&options, &error),
            "the third failure starts the cooldown"
        );
        assert_eq!(gate.wait(), Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(gate.wait(), Duration::ZERO);
        assert!(
            !gate.failed(&options, &error),
            "a new round after the cooldown"
        );
        gate.succeeded();
        assert_eq!(gate.wait(), Duration::ZERO);
    }
}
