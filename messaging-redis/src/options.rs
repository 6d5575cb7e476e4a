//! Tuning of the Redis backend: set in code with [`RedisOptions`], or as query parameters of
//! `REDIS_URL` (`?maxlen=100000&reclaim_idle=30s`), which are taken off before the URL reaches
//! the `redis` client; the request-reply caps come from settings of their own
//! (`REDIS_REPLY_MAXLEN`, `REDIS_REPLY_TTL`).

use std::path::PathBuf;
use std::time::Duration;

use messaging_core::BrokerError;
use messaging_core::config::Settings;
use url::Url;

use crate::error::{BROKER, RedisBrokerError};

/// The setting of [`RedisOptions::reply_maxlen`].
pub(crate) const REPLY_MAXLEN_VARIABLE: &str = "REDIS_REPLY_MAXLEN";
/// The setting of [`RedisOptions::reply_ttl`].
pub(crate) const REPLY_TTL_VARIABLE: &str = "REDIS_REPLY_TTL";

/// Options of a [`RedisBroker`](crate::RedisBroker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// Approximate `MAXLEN ~ n` trimming on every `XADD`, except dead-letter records, which
    /// are never trimmed. `None` (the default) keeps everything. URL: `maxlen=n`.
    pub maxlen: Option<usize>,
    /// How long an entry must stay unacknowledged by its consumer before another consumer of
    /// the group takes it over with `XAUTOCLAIM`. Live consumers refresh the entries they
    /// still work on every quarter of it (handlers in a retry back-off included, however
    /// long), so only dead consumers lose theirs. URL: `reclaim_idle=30s`.
    pub reclaim_idle: Duration,
    /// How long one `XREADGROUP … BLOCK` waits before the loop looks for entries to reclaim
    /// again. URL: `block=2s`.
    pub block: Duration,
    /// Whether a consumer dropped without closing hands its unacknowledged entries back at
    /// once (they are marked idle so the next reclaim takes them) instead of waiting for
    /// `reclaim_idle`. URL: `release_on_drop=false`.
    pub release_on_drop: bool,
    /// Consumers of the group idle this long with nothing pending are dead (their process
    /// crashed, since every live consumer reads at least every `block`): their names are
    /// removed from the group, so crashed processes do not pile up. URL: `forget_after=1h`.
    pub forget_after: Duration,
    /// The start of each consumer's name; a process id and a random suffix follow, so every
    /// consumer is unique. URL: `consumer_prefix=orders`.
    pub consumer_prefix: String,
    /// For `rediss://`: a PEM file of the certificate authorities to trust instead of the
    /// system's (a private CA). URL: `tls_ca=/etc/redis/ca.pem`.
    pub tls_ca: Option<PathBuf>,
    /// For `rediss://` with client certificates (mutual TLS): the PEM certificate and key
    /// files. URL: `tls_cert=/etc/redis/client.pem&tls_key=/etc/redis/client.key`.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Limit of one request on the shared connection (publish, acknowledge, reclaim).
    pub response_timeout: Duration,
    /// Limit of one connection attempt.
    pub connection_timeout: Duration,
    /// Request-reply: every reply trims its requester's reply stream to about this many
    /// entries (`MAXLEN ~ n`), so a requester that stopped reading holds at most that many.
    /// Above zero. Setting `REDIS_REPLY_MAXLEN` (default 10000).
    pub reply_maxlen: usize,
    /// Request-reply: every reply sets its requester's reply stream to expire after this long
    /// (`PEXPIRE`), so the stream of a requester that is gone disappears by itself. A live
    /// requester reads its replies as they come, so only replies it left unread that long
    /// are lost. Above zero. Setting `REDIS_REPLY_TTL` (default 10m).
    pub reply_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            maxlen: None,
            reclaim_idle: Duration::from_secs(30),
            block: Duration::from_secs(2),
            release_on_drop: true,
            forget_after: Duration::from_secs(3600),
            consumer_prefix: "messaging".to_owned(),
            tls_ca: None,
            tls_client: None,
            response_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(2),
            reply_maxlen: 10_000,
            reply_ttl: Duration::from_secs(600),
        }
    }
}

/// The query parameters this crate reads from the URL.
const KEYS: [&str; 9] = [
    "maxlen",
    "reclaim_idle",
    "block",
    "release_on_drop",
    "forget_after",
    "consumer_prefix",
    "tls_ca",
    "tls_cert",
    "tls_key",
];

impl RedisOptions {
    /// How often a consumer looks for entries to reclaim, and refreshes the idle time of the
    /// entries it holds: well inside `reclaim_idle`, so a live consumer never looks dead.
    pub(crate) fn keeper_period(&self) -> Duration {
        (self.reclaim_idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(10))
    }

    /// How often a consumer runs an `XAUTOCLAIM` round over its streams. Frequent, so the
    /// entries a dropped consumer handed back move on quickly; a round is cheap.
    pub(crate) fn reclaim_interval(&self) -> Duration {
        (self.reclaim_idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// How often a consumer looks for dead consumers to forget.
    pub(crate) fn forget_period(&self) -> Duration {
        self.forget_after
            .clamp(Duration::from_millis(50), Duration::from_secs(60))
    }

    /// Takes this crate's parameters off `url`, applying them over `self`; returns the URL
    /// the `redis` client gets.
    pub fn apply_url(&mut self, url: &str) -> Result<String, RedisBrokerError> {
        let mut parsed = Url::parse(url).map_err(|e| RedisBrokerError::Url(e.to_string()))?;
        let mut kept = Vec::new();
        let (mut tls_cert, mut tls_key) = (None, None);
        for (key, value) in parsed.query_pairs() {
            let value = value.trim();
            match key.as_ref() {
                "maxlen" => {
                    let n: usize = value
                        .parse()
                        .map_err(|_| invalid("maxlen", value, "a whole number"))?;
                    self.maxlen = (n > 0).then_some(n);
                }
                "reclaim_idle" => self.reclaim_idle = duration("reclaim_idle", value)?,
                "block" => self.block = duration("block", value)?,
                "release_on_drop" => {
                    self.release_on_drop = value
                        .parse()
                        .map_err(|_| invalid("release_on_drop", value, "`true` or `false`"))?;
                }
                "forget_after" => self.forget_after = duration("forget_after", value)?,
                "consumer_prefix" => self.consumer_prefix = value.to_owned(),
                "tls_ca" => self.tls_ca = Some(value.into()),
                "tls_cert" => tls_cert = Some(PathBuf::from(value)),
                "tls_key" => tls_key = Some(PathBuf::from(value)),
                _ => kept.push((key.into_owned(), value.to_owned())),
            }
        }
        match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => self.tls_client = Some((cert, key)),
            (None, None) => {}
            (cert, _) => {
                let missing = if cert.is_some() {
                    "tls_key"
                } else {
                    "tls_cert"
                };
                return Err(invalid(
                    missing,
                    "",
                    "a file path: `tls_cert` and `tls_key` go together",
                ));
            }
        }
        if self.reclaim_idle.is_zero() {
            return Err(invalid("reclaim_idle", "0", "a duration above zero"));
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok(parsed.into())
    }
}

impl RedisOptions {
    /// Applies the settings this crate reads besides `REDIS_URL`: `REDIS_REPLY_MAXLEN` (a
    /// whole number above zero) and `REDIS_REPLY_TTL` (a duration above zero). Unset or blank
    /// keeps the value in `self`, as an empty `MESSAGING_*` variable takes its default; a bad
    /// value is a [`BrokerError::Config`] naming the variable.
    pub fn apply_settings(&mut self, settings: &Settings) -> Result<(), BrokerError> {
        if let Some(value) = settings.get_non_blank(REPLY_MAXLEN_VARIABLE) {
            self.reply_maxlen = value.trim().parse().map_err(|_| {
                BrokerError::config(
                    BROKER,
                    REPLY_MAXLEN_VARIABLE,
                    format_args!("`{value}` is not a whole number (the most replies an instance's reply stream keeps, e.g. `10000`)"),
                )
            })?;
        }
        if let Some(value) = settings.get_non_blank(REPLY_TTL_VARIABLE) {
            self.reply_ttl =
                messaging_core::config::parse_duration(REPLY_TTL_VARIABLE, value).map_err(|_| {
                    BrokerError::config(
                        BROKER,
                        REPLY_TTL_VARIABLE,
                        format_args!("`{value}` is not a duration (how long an unread reply stream lives, e.g. `10m`)"),
                    )
                })?;
        }
        self.check_replies()
    }

    /// The request-reply values that can never work (set in code or by settings), as a
    /// [`BrokerError::Config`] naming their variable.
    pub(crate) fn check_replies(&self) -> Result<(), BrokerError> {
        if self.reply_maxlen == 0 {
            return Err(BrokerError::config(
                BROKER,
                REPLY_MAXLEN_VARIABLE,
                "is 0: a reply stream capped at nothing would lose every reply; give a number above zero",
            ));
        }
        if self.reply_ttl.as_millis() == 0 {
            return Err(BrokerError::config(
                BROKER,
                REPLY_TTL_VARIABLE,
                format_args!(
                    "is {}ms: a reply stream would expire at once; give at least `1ms` (default `10m`)",
                    self.reply_ttl.as_millis()
                ),
            ));
        }
        Ok(())
    }
}

fn duration(key: &'static str, value: &str) -> Result<Duration, RedisBrokerError> {
    messaging_core::config::parse_duration(key, value)
        .map_err(|_| invalid(key, value, "a duration such as `30s` or `500ms`"))
}

fn invalid(key: &'static str, value: &str, expected: &'static str) -> RedisBrokerError {
    RedisBrokerError::UrlOption {
        key,
        value: value.to_owned(),
        expected,
        known: KEYS.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_read_and_removed() {
        let mut options = RedisOptions::default();
        let url = options
            .apply_url(
                "redis://u:p@h:6379/2?maxlen=1000&reclaim_idle=1500ms&protocol=resp3&block=1s",
            )
            .unwrap();
        assert_eq!(url, "redis://u:p@h:6379/2?protocol=resp3");
        assert_eq!(options.maxlen, Some(1000));
        assert_eq!(options.reclaim_idle, Duration::from_millis(1500));
        assert_eq!(options.block, Duration::from_secs(1));
        assert!(options.release_on_drop);
    }

    #[test]
    fn tls_files_come_from_the_url() {
        let mut options = RedisOptions::default();
        let url = options
            .apply_url("rediss://h:6380/0?tls_ca=/ca.pem&tls_cert=/c.pem&tls_key=/c.key")
            .unwrap();
        assert_eq!(url, "rediss://h:6380/0");
        assert_eq!(options.tls_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(options.tls_client, Some(("/c.pem".into(), "/c.key".into())));
        let e = RedisOptions::default()
            .apply_url("rediss://h/0?tls_cert=/c.pem")
            .unwrap_err();
        assert!(e.to_string().contains("tls_key"), "{e}");
    }

    #[test]
    fn plain_urls_pass_unchanged() {
        let mut options = RedisOptions::default();
        assert_eq!(
            options.apply_url("rediss://h:6380/0").unwrap(),
            "rediss://h:6380/0"
        );
        assert_eq!(options, RedisOptions::default());
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let e = RedisOptions::default()
            .apply_url("redis://h/0?reclaim_idle=soon")
            .unwrap_err();
        assert!(e.to_string().contains("reclaim_idle"), "{e}");
        let e = RedisOptions::default()
            .apply_url("redis://h/0?maxlen=-3")
            .unwrap_err();
        assert!(e.to_string().contains("maxlen"), "{e}");
    }

    #[test]
    fn keeper_runs_well_inside_the_idle_time() {
        let options = RedisOptions {
            reclaim_idle: Duration::from_secs(1),
            ..RedisOptions::default()
        };
        assert_eq!(options.keeper_period(), Duration::from_millis(250));
    }
}
