//! Opening AMQP connections, and the pacing of reconnection attempts (DESIGN §5): up to
//! `connect_max_retries` attempts `connect_retry_delay` apart, then a `connect_cooldown`.
//! Recovery is done here rather than by lapin's auto-recovery so the pacing follows the
//! framework's configuration and every channel, declaration and consumer is rebuilt by the
//! same code that built it first.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio::time::Instant;

use crate::error::RabbitError;
use crate::options::RabbitOptions;

/// Opens one connection named `<prefix> <role>` (the name `rabbitmqctl list_connections
/// client_properties` and the management UI show).
pub(crate) async fn open(options: &RabbitOptions, role: &str) -> Result<Connection, RabbitError> {
    let name = format!("{} {role}", options.connection_name);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(&options.url, properties).await?)
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
