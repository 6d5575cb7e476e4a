//! Creating topics that are missing, through the admin client. Kafka brokers often do not
//! create topics on first use (Confluent Cloud and the test broker do not), and a consumer
//! of a missing topic would wait for ever, so topics are created before they are used.
//! Existing topics are looked up in the cluster's metadata first: a client allowed to use a
//! topic but not to create topics (a common ACL) must not be refused.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::BrokerError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;

use rdkafka::producer::Producer as _;

use crate::error::{KafkaSetupError, creation_error, from_kafka, operation};
use crate::publish::Publisher;
use crate::quiet::Quiet;
use crate::settings::{Client, KafkaSettings};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How long a reply topic keeps a record: long past any request's wait, short enough that a
/// busy service's replies stay small. Kafka deletes whole segments, so segments are rolled
/// every 10 minutes (rather than weekly) for the retention to take effect.
const REPLY_TOPIC_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("retention.ms", "3600000"),
    ("segment.ms", "600000"),
];

/// What a topic is for, which decides how it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Events, dead letters: the cluster's default configuration.
    Events,
    /// Replies (request-reply): bounded retention ([`REPLY_TOPIC_CONFIG`]), so that a reply
    /// topic does not grow.
    Replies,
}

/// Creates topics on first use and remembers which exist.
pub(crate) struct Topics {
    /// `None` only while dropped: see the `Drop` impl.
    admin: Option<AdminClient<Quiet>>,
    /// Its producer serves metadata requests, which block: a clone of the handle can move
    /// to a blocking thread.
    metadata: Arc<Publisher>,
    partitions: i32,
    replication_factor: i32,
    /// Topics known to exist, so each is created at most once per client.
    known: Mutex<HashSet<String>>,
    /// Held while a topic published to for the first time is looked up: a burst of first
    /// publishes then asks the cluster once, not once per message (one lock for every topic:
    /// first uses are few).
    first_use: tokio::sync::Mutex<()>,
    /// Metadata requests made, for the tests.
    #[cfg(test)]
    metadata_reads: std::sync::atomic::AtomicUsize,
}

impl Topics {
    pub(crate) fn new(
        settings: &KafkaSettings,
        metadata: Arc<Publisher>,
    ) -> Result<Self, BrokerError> {
        let admin = settings
            .client_config(Client::Admin, &[], &[])
            .create_with_context(Quiet)
            .map_err(|e| creation_error("create admin client", e, settings, Client::Admin))?;
        Ok(Self {
            admin: Some(admin),
            metadata,
            partitions: settings.partitions,
            replication_factor: settings.replication_factor,
            known: Mutex::default(),
            first_use: tokio::sync::Mutex::default(),
            #[cfg(test)]
            metadata_reads: Default::default(),
        })
    }

    fn unknown<'a>(&self, topics: &'a [String]) -> Vec<&'a str> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<&str> = topics
            .iter()
            .map(String::as_str)
            .filter(|t| !known.contains(*t))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Makes sure `topics` exist, creating the missing ones with the configured partitions
    /// and replication. An existing topic is left as it is.
    pub(crate) async fn ensure(&self, topics: &[String]) -> Result<(), BrokerError> {
        self.ensure_as(topics, Purpose::Events).await
    }

    /// [`Topics::ensure`], creating the missing topics as `purpose` needs them.
    pub(crate) async fn ensure_as(
        &self,
        topics: &[String],
        purpose: Purpose,
    ) -> Result<(), BrokerError> {
        let mut missing = self.unknown(topics);
        if missing.is_empty() {
            return Ok(());
        }
        let existing = self.existing().await?;
        missing.retain(|t| !existing.contains(*t));
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(existing);
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                let topic = NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
                );
                match purpose {
                    Purpose::Events => topic,
                    Purpose::Replies => REPLY_TOPIC_CONFIG
                        .iter()
                        .fold(topic, |topic, (name, value)| topic.set(name, value)),
                }
            })
            .collect();
        let options = AdminOptions::new()
            .request_timeout(Some(TIMEOUT))
            .operation_timeout(Some(TIMEOUT));
        let Some(admin) = &self.admin else {
            return Err(operation("create topics", "the client is closing"));
        };
        let results = admin
            .create_topics(&new, &options)
            .await
            .map_err(|e| from_kafka("create topics", e))?;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match settle_creations(results, &mut known, self.partitions) {
            Some(error) => Err(operation("create topic", error)),
            None => Ok(()),
        }
    }

    /// The topics the cluster has.
    async fn existing(&self) -> Result<HashSet<String>, BrokerError> {
        #[cfg(test)]
        self.metadata_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = self.metadata.producer();
        let metadata =
            tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, TIMEOUT))
                .await
                .map_err(|e| operation("read metadata", e))?
                .map_err(|e| from_kafka("read metadata", e))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name().to_owned())
            .collect())
    }

    /// Like [`Topics::ensure_as`] for a topic about to be published to; a refusal is only
    /// logged, since the topic may exist and this client merely lack the right to create
    /// topics.
    pub(crate) async fn ensure_for_publish(&self, topic: &str, purpose: Purpose) {
        let known = || {
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(topic)
        };
        if known() {
            return;
        }
        let _one_at_a_time = self.first_use.lock().await;
        // Made sure of (or given up on) by another publish while this one waited.
        if known() {
            return;
        }
        let topics = [topic.to_owned()];
        // Boxed: the admin requests make a large future, and every publish's future would
        // carry its room.
        if let Err(error) = Box::pin(self.ensure_as(&topics, purpose)).await {
            tracing::warn!(%topic, %error, "could not make sure the topic exists; publishing anyway");
            // Do not ask again on every publish.
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(topic.to_owned());
        }
    }
}

impl Drop for Topics {
    /// The admin client joins its polling thread and destroys its librdkafka handle when
    /// dropped, which blocks: done on a thread of its own, since the last clone of a broker
    /// is often dropped on a Tokio worker.
    fn drop(&mut self) {
        if let Some(admin) = self.admin.take() {
            let closing = std::thread::Builder::new()
                .name("kafka-admin-close".to_owned())
                .spawn(move || drop(admin));
            if let Err(error) = closing {
                tracing::debug!(%error, "could not close the admin client on a thread of its own");
            }
        }
    }
}

/// Records the topics that exist after a `CreateTopics` request (created, or created by
/// someone else meanwhile) and returns the first refusal, as an error that says what to do.
fn settle_creations(
    results: Vec<Result<String, (String, RDKafkaErrorCode)>>,
    known: &mut HashSet<String>,
    partitions: i32,
) -> Option<KafkaSetupError> {
    let mut first_error = None;
    for result in results {
        match result {
            Ok(topic) => {
                tracing::info!(%topic, partitions, "created Kafka topic");
                known.insert(topic);
            }
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                known.insert(topic);
            }
            Err((topic, code)) => {
                first_error.get_or_insert(KafkaSetupError::CreateTopic { topic, code });
            }
        }
    }
    first_error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_creation_is_an_error_that_names_the_topic_and_the_fix() {
        let mut known = HashSet::new();
        let error = settle_creations(
            vec![
                Ok("orders".to_owned()),
                Err(("payments".to_owned(), RDKafkaErrorCode::TopicAlreadyExists)),
                Err((
                    "audit".to_owned(),
                    RDKafkaErrorCode::TopicAuthorizationFailed,
                )),
                Err(("later".to_owned(), RDKafkaErrorCode::PolicyViolation)),
            ],
            &mut known,
            3,
        )
        .expect("a refusal is an error");
        let text = error.to_string();
        assert!(
            text.starts_with("could not create topic `audit`: "),
            "{text}"
        );
        assert!(
            text.ends_with("create it beforehand, or allow this client to create topics"),
            "{text}"
        );
        // What exists is remembered and never asked for again; what was refused is not.
        let mut known: Vec<_> = known.into_iter().collect();
        known.sort();
        assert_eq!(known, ["orders", "payments"]);
    }

    #[tokio::test]
    async fn a_burst_of_first_publishes_asks_the_cluster_once() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("orders", 1, 1).unwrap();
        let settings = KafkaSettings::new(&cluster.bootstrap_servers());
        let metadata =
            Arc::new(Publisher::new(settings.client_config(Client::Producer, &[], &[])).unwrap());
        let topics = Topics::new(&settings, metadata).unwrap();
        futures::future::join_all(
            (0..20).map(|_| topics.ensure_for_publish("orders", Purpose::Events)),
        )
        .await;
        assert!(topics.known.lock().unwrap().contains("orders"));
        assert_eq!(
            topics
                .metadata_reads
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn topics_that_exist_meanwhile_are_no_error() {
        let mut known = HashSet::new();
        let outcome = settle_creations(
            vec![Err((
                "orders".to_owned(),
                RDKafkaErrorCode::TopicAlreadyExists,
            ))],
            &mut known,
            3,
        );
        assert!(outcome.is_none());
        assert!(known.contains("orders"));
    }
}
