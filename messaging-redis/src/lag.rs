//! Consumer lag on Redis Streams: per stream the group reads, `XINFO GROUPS` gives the
//! entries not yet delivered to the group (`lag`) and those delivered and not acknowledged
//! (`pending`); the group's lag is their sum (see `messaging_core::lag`).
//!
//! Redis answers `lag` with nil when it cannot work it out (entries deleted with `XDEL`
//! after the group's last delivered one, a group created at an arbitrary id; and servers
//! before 7.0 have no `lag` at all). The entries after the last delivered one are then
//! counted with `XRANGE`, a page at a time, up to [`COUNT_LIMIT`].

use messaging_core::{BrokerError, LagRow};
use redis::aio::ConnectionManager;
use redis::streams::StreamInfoGroupsReply;
use redis::{RedisError, Value};

use crate::broker::not_a_stream;
use crate::entry::parse_entries;
use crate::error::{broker_error, is_wrong_type, own_error};

/// Where counting stops when Redis cannot tell the lag: past the alert thresholds anyone
/// sets, and few enough pages to read every refresh. The lag reads this much then.
pub(crate) const COUNT_LIMIT: u64 = 100_000;

/// Entries per `XRANGE` page when counting.
const PAGE: u64 = 1000;

/// The lag of `group` on each of `topics` that exists and that the group reads.
pub(crate) async fn lag(
    conn: &mut ConnectionManager,
    group: &str,
    topics: &[String],
) -> Result<Vec<LagRow>, BrokerError> {
    let mut rows = Vec::new();
    for topic in topics {
        let reply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(topic)
            .query_async::<StreamInfoGroupsReply>(conn)
            .await;
        let groups = match reply {
            Ok(reply) => reply.groups,
            Err(error) if is_no_such_key(&error) => continue,
            Err(error) if is_wrong_type(&error) => {
                return Err(not_a_stream(conn, "lag", topic).await);
            }
            Err(error) => return Err(broker_error("lag", error)),
        };
        let Some(info) = groups.into_iter().find(|g| g.name == group) else {
            continue;
        };
        let waiting = match info.lag {
            Some(lag) => lag as u64,
            None => count_after(conn, topic, &info.last_delivered_id).await?,
        };
        let pending = info.pending as u64;
        rows.push(LagRow {
            group: group.to_owned(),
            topic: topic.clone(),
            partition: None,
            lag: waiting + pending,
            pending: Some(pending),
        });
    }
    Ok(rows)
}

fn is_no_such_key(error: &RedisError) -> bool {
    error.code() == Some("ERR") && error.detail().is_some_and(|d| d.contains("no such key"))
}

/// How many entries of `topic` come after `id`, counted up to [`COUNT_LIMIT`].
async fn count_after(
    conn: &mut ConnectionManager,
    topic: &str,
    id: &str,
) -> Result<u64, BrokerError> {
    let mut after = id.to_owned();
    let mut counted = 0;
    while counted < COUNT_LIMIT {
        let Some(start) = next_id(&after) else {
            break;
        };
        let reply = redis::cmd("XRANGE")
            .arg(topic)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE.min(COUNT_LIMIT - counted))
            .query_async::<Value>(conn)
            .await
            .map_err(|e| broker_error("lag", e))?;
        let entries = parse_entries("XRANGE", reply).map_err(|e| own_error("lag", e))?;
        let Some(last) = entries.last() else {
            break;
        };
        after = last.id.clone();
        counted += entries.len() as u64;
    }
    Ok(counted)
}

/// The smallest stream id after `id` (`ms-seq`): an inclusive `XRANGE` start that every
/// server takes (the exclusive `(id` needs 6.2). `None` after the largest id there is.
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    match seq.checked_add(1) {
        Some(seq) => Some(format!("{ms}-{seq}")),
        None => Some(format!("{}-0", ms.checked_add(1)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_id_is_the_next_sequence_number_or_millisecond() {
        assert_eq!(next_id("0-0").as_deref(), Some("0-1"));
        assert_eq!(
            next_id("1700000000000-7").as_deref(),
            Some("1700000000000-8")
        );
        assert_eq!(next_id(&format!("5-{}", u64::MAX)).as_deref(), Some("6-0"));
        assert_eq!(next_id(&format!("{}-{}", u64::MAX, u64::MAX)), None);
        assert_eq!(next_id("nonsense"), None);
    }
}
