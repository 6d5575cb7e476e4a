//! librdkafka's log and error callbacks, rate-limited. While a broker is down every client
//! (producer, admin client, each consumer) reports each failed reconnect, some twice (a
//! `FAIL` log line and an error event with the same text; rdkafka hands a producer's error
//! events to the context twice): hundreds of lines a minute that bury the framework's own.
//! Here each distinct message is printed when it starts, and repeats are counted and
//! summarized in one line at most every [`SUMMARY_EVERY`], for all clients of the process.
//! Messages differing only in numbers (`0/1 brokers are down`, `1/1 brokers are down`) or in
//! a parenthesized aside (`(after 0ms in state CONNECT, 3 identical error(s) suppressed)`)
//! count as the same.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// At most one summary of suppressed repeats this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// A message not seen for this long is printed again when it comes back: a new outage.
const QUIET_AFTER: Duration = Duration::from_secs(60);

/// How many distinct messages a summary names.
const SUMMARY_NAMES: usize = 3;

/// The process's limiter: the clients share it, so that a message every client reports is
/// printed once.
static LIMITER: LazyLock<Limiter> = LazyLock::new(Limiter::default);

/// Prints a librdkafka log line, unless it repeats one printed lately. Debug lines (asked
/// for with the `debug` property) always go through.
pub(crate) fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    if matches!(level, RDKafkaLogLevel::Debug) {
        tracing::debug!(target: "librdkafka", "{facility}: {message}");
        return;
    }
    let outcome = LIMITER.note(message, Instant::now());
    if outcome.print {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::error!(target: "librdkafka", "Kafka client: {facility}: {message}")
            }
            RDKafkaLogLevel::Error | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "Kafka client: {facility}: {message}")
            }
            _ => tracing::info!(target: "librdkafka", "Kafka client: {facility}: {message}"),
        }
    }
    outcome.print_summary();
}

/// Prints an error librdkafka reports, unless it repeats one printed lately (its `FAIL` log
/// line usually came first, with the same text). A fatal error is always printed.
pub(crate) fn error(error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::PartitionEOF) {
        // Not an error: asked for (`enable.partition.eof`) by the readers of a DLQ.
        return;
    }
    if code == Some(RDKafkaErrorCode::Fatal) {
        tracing::error!(target: "librdkafka", %error, "Kafka client: fatal error: {reason}");
        return;
    }
    let outcome = LIMITER.note(reason, Instant::now());
    if outcome.print {
        match code {
            Some(code) => tracing::warn!(target: "librdkafka", "Kafka client: {code:?}: {reason}"),
            None => tracing::warn!(target: "librdkafka", "Kafka client: {error}: {reason}"),
        }
    }
    outcome.print_summary();
}

/// The context of the clients that need no callbacks of their own (admin client, browsing
/// consumers): only the quiet logging.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(&error, reason);
    }
}

impl ConsumerContext for Quiet {}

/// Counts repeats of each distinct message.
#[derive(Default)]
struct Limiter {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By the message's shape ([`shape`]).
    seen: HashMap<String, Seen>,
    /// When the first repeat not summarized yet was suppressed.
    window: Option<Instant>,
}

struct Seen {
    last: Instant,
    /// Repeats suppressed since the last summary.
    repeats: u64,
    /// The last repeat's text, for the summary.
    text: String,
}

/// What to do with one message.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// Print it: it starts (or starts again).
    print: bool,
    /// A summary of the repeats suppressed lately, due now.
    summary: Option<String>,
}

impl Outcome {
    fn print_summary(self) {
        if let Some(summary) = self.summary {
            tracing::warn!(target: "librdkafka", "Kafka client: {summary}");
        }
    }
}

impl Limiter {
    fn note(&self, message: &str, now: Instant) -> Outcome {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let key = shape(message);
        let print = match state.seen.get_mut(&key) {
            Some(seen) if now.duration_since(seen.last) < QUIET_AFTER => {
                seen.last = now;
                seen.repeats += 1;
                message.clone_into(&mut seen.text);
                false
            }
            _ => true,
        };
        if print {
            // Repeats of an earlier run not summarized yet stay counted.
            let repeats = state.seen.get(&key).map_or(0, |s| s.repeats);
            state.seen.insert(
                key,
                Seen {
                    last: now,
                    repeats,
                    text: message.to_owned(),
                },
            );
        } else if state.window.is_none() {
            state.window = Some(now);
        }
        let summary = match state.window {
            Some(start) if now.duration_since(start) >= SUMMARY_EVERY => {
                state.window = None;
                Some(summarize(&mut state.seen, now.duration_since(start)))
            }
            _ => None,
        };
        state
            .seen
            .retain(|_, s| s.repeats > 0 || now.duration_since(s.last) < QUIET_AFTER);
        Outcome { print, summary }
    }
}

/// One line saying how many repeats were suppressed, naming the most frequent messages; the
/// counts start again from zero.
fn summarize(seen: &mut HashMap<String, Seen>, over: Duration) -> String {
    let mut counted: Vec<(u64, &str)> = seen
        .values()
        .filter(|s| s.repeats > 0)
        .map(|s| (s.repeats, s.text.as_str()))
        .collect();
    counted.sort_unstable_by(|a, b| b.cmp(a));
    let total: u64 = counted.iter().map(|(n, _)| n).sum();
    let mut line = format!(
        "{total} repeated messages suppressed in the last {}s:",
        over.as_secs()
    );
    for (n, text) in counted.iter().take(SUMMARY_NAMES) {
        let _ = write!(line, " {n} × `{text}`;");
    }
    if counted.len() > SUMMARY_NAMES {
        let _ = write!(line, " and {} more", counted.len() - SUMMARY_NAMES);
    }
    for s in seen.values_mut() {
        s.repeats = 0;
    }
    line.trim_end_matches(';').to_owned()
}

/// What identifies a message across repeats: its text without digits and bracketed or
/// parenthesized asides (a log line's `[thrd:…]: ` prefix, which the error event with the
/// same text lacks, goes with them).
fn shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut depth = 0usize;
    for c in message.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
    }
    out.trim_start_matches([':', ' ']).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: \
                           Connection refused (after 0ms in state CONNECT)";

    #[test]
    fn numbers_and_asides_do_not_make_a_message_new() {
        assert_eq!(shape("0/1 brokers are down"), shape("1/1 brokers are down"));
        assert_eq!(
            shape(REFUSED),
            shape(&REFUSED.replace("CONNECT)", "CONNECT, 29 identical error(s) suppressed)"))
        );
        assert_ne!(shape(REFUSED), shape("1/1 brokers are down"));
        // The `FAIL` log line and the error event say the same.
        assert_eq!(
            shape(&format!("[thrd:127.0.0.1:9092/bootstrap]: {REFUSED}")),
            shape(REFUSED)
        );
    }

    /// A minute of a broker being down, four clients each reporting two messages (one of
    /// them twice) every second: a few lines, not hundreds.
    #[test]
    fn a_minute_of_repeats_prints_each_message_once_and_one_summary() {
        let limiter = Limiter::default();
        let start = Instant::now();
        let (mut printed, mut summaries) = (Vec::new(), Vec::new());
        for second in 0..60u64 {
            let now = start + Duration::from_secs(second);
            for client in 0..4 {
                for message in [
                    REFUSED,
                    REFUSED,
                    &format!("{}/1 brokers are down", client % 2),
                ] {
                    let outcome = limiter.note(message, now);
                    if outcome.print {
                        printed.push(message.to_owned());
                    }
                    summaries.extend(outcome.summary);
                }
            }
        }
        assert_eq!(printed.len(), 2, "each distinct message once: {printed:?}");
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert!(
            summaries[0].starts_with("359 repeated messages suppressed in the last 30s"),
            "{}",
            summaries[0]
        );
        assert!(
            summaries[0].contains("brokers are down"),
            "{}",
            summaries[0]
        );
        // Back after a long quiet spell: a new outage, printed again.
        // The repeats of its last 30 s, not summarized yet, are reported with it.
        let later = start + Duration::from_secs(200);
        let outcome = limiter.note(REFUSED, later);
        assert!(outcome.print);
        let summary = outcome.summary.expect("the first outage's last repeats");
        assert!(summary.starts_with("359 repeated"), "{summary}");
        let outcome = limiter.note(REFUSED, later);
        assert_eq!(outcome, Outcome::default(), "a repeat again");
    }
}
