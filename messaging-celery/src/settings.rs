//! The backend's configuration: the broker URL (whose scheme picks the transport), the map
//! from topics and event names to Celery tasks, and the default queue. Read from the
//! framework's `Config::settings` (the `CELERY_` variables), or built in code.

use std::collections::BTreeMap;
use std::time::Duration;

use messaging_core::config::mask_url;
use messaging_core::{BrokerError, Config};

use crate::error::NAME;

/// The variable naming the broker URL.
pub const URL_VARIABLE: &str = "CELERY_BROKER_URL";
/// The variable holding the map from topics and event names to tasks.
pub const TASKS_VARIABLE: &str = "CELERY_TASKS";
/// The variable naming the queue of tasks whose entry names none.
pub const QUEUE_VARIABLE: &str = "CELERY_DEFAULT_QUEUE";

/// Celery's own default broker (`broker_url`): RabbitMQ on localhost, virtual host `/`.
pub const DEFAULT_URL: &str = "amqp://guest:guest@localhost:5672//";
/// Celery's default queue (`task_default_queue`).
pub const DEFAULT_QUEUE: &str = "celery";

/// Which of Celery's transports the URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// kombu's Redis transport: lists of JSON envelopes (`redis://`).
    Redis,
    /// AMQP 0-9-1, RabbitMQ (`amqp://`).
    Amqp,
}

/// Where the tasks of one topic or event name go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRoute {
    /// The Celery task name, as the Python worker registered it
    /// (`vectosvc.worker.tasks.process_mood_created`).
    pub task: String,
    /// The queue it is sent to and read from.
    pub queue: String,
}

/// Everything the backend is configured with.
#[derive(Clone, Debug)]
pub struct CeleryOptions {
    /// The broker URL; its scheme picks the transport.
    pub url: String,
    /// Task routes by topic or event name, in the order given.
    pub routes: Vec<(String, TaskRoute)>,
    /// The service name: written as the tasks' `origin`, and into Redis processing-list
    /// names for nothing but legibility.
    pub source: String,
    /// Wait between reconnection attempts of a consumer's reader.
    pub reconnect_delay: Duration,
    /// Redis: how long an instance's liveness key lives without being refreshed; the
    /// unacknowledged tasks of an instance whose key expired are put back in their queues.
    pub liveness: Duration,
    /// Redis: how long one blocking read waits for a task.
    pub block: Duration,
    /// Whether a consumer dropped without `close` puts its unacknowledged tasks back at once
    /// (true), or leaves them for the liveness sweep, as a crashed process does (tests).
    pub release_on_drop: bool,
}

impl CeleryOptions {
    /// Options for `url` with no routes yet.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            routes: Vec::new(),
            source: "messaging".to_owned(),
            reconnect_delay: Duration::from_secs(1),
            liveness: Duration::from_secs(10),
            block: Duration::from_secs(1),
            release_on_drop: true,
        }
    }

    /// Adds a route: messages of `key` (a topic or an event name) become `task` in `queue`.
    pub fn route(
        mut self,
        key: impl Into<String>,
        task: impl Into<String>,
        queue: impl Into<String>,
    ) -> Self {
        self.routes.push((
            key.into(),
            TaskRoute {
                task: task.into(),
                queue: queue.into(),
            },
        ));
        self
    }

    /// The options `config` gives: `CELERY_BROKER_URL`, `CELERY_TASKS`,
    /// `CELERY_DEFAULT_QUEUE`, and the framework's retry delay and service name.
    pub fn from_config(config: &Config) -> Result<Self, BrokerError> {
        let url = configured_url(config)?;
        let queue = match config.settings.get(QUEUE_VARIABLE) {
            Some(queue) if queue.trim().is_empty() => {
                return Err(BrokerError::config(
                    NAME,
                    QUEUE_VARIABLE,
                    "is set but empty; unset it for Celery's default queue `celery`",
                ));
            }
            Some(queue) => queue.trim().to_owned(),
            None => DEFAULT_QUEUE.to_owned(),
        };
        let routes = match config.settings.get(TASKS_VARIABLE) {
            Some(spec) => parse_tasks(spec, &queue)
                .map_err(|message| BrokerError::config(NAME, TASKS_VARIABLE, message))?,
            None => Vec::new(),
        };
        let mut options = Self::new(url);
        options.routes = routes;
        options.source = config.source.clone();
        options.reconnect_delay = config.connect_retry_delay.max(Duration::from_millis(100));
        Ok(options)
    }

    /// The transport the URL's scheme names.
    pub fn transport(&self) -> Result<Transport, BrokerError> {
        transport_of(&self.url)
    }

    /// The route of a message on `topic` with the event name `event` (if it has one): the
    /// event name's entry first, then the topic's.
    pub fn route_of(&self, topic: &str, event: Option<&str>) -> Option<&TaskRoute> {
        event
            .and_then(|event| self.find(event))
            .or_else(|| self.find(topic))
    }

    /// The route whose key is exactly `key`.
    pub fn find(&self, key: &str) -> Option<&TaskRoute> {
        self.routes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, route)| route)
    }
}

/// The URL `config` gives: `CELERY_BROKER_URL`, else Celery's default; set but empty is an
/// error naming it.
pub(crate) fn configured_url(config: &Config) -> Result<String, BrokerError> {
    Ok(config
        .settings
        .get_required(NAME, URL_VARIABLE)?
        .unwrap_or(DEFAULT_URL)
        .trim()
        .to_owned())
}

fn transport_of(url: &str) -> Result<Transport, BrokerError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis") => Ok(Transport::Redis),
        Some("amqp") => Ok(Transport::Amqp),
        Some(other) => Err(BrokerError::config(
            NAME,
            URL_VARIABLE,
            format!(
                "`{}` has the scheme `{other}`; Celery mode speaks `redis://` (kombu's Redis \
                 transport) and `amqp://` (RabbitMQ)",
                mask_url(url)
            ),
        )),
        None => Err(BrokerError::config(
            NAME,
            URL_VARIABLE,
            format!(
                "`{}` is not a URL; write e.g. redis://localhost:6379/0 or \
                 amqp://guest:guest@localhost:5672//",
                mask_url(url)
            ),
        )),
    }
}

/// Parses `CELERY_TASKS`: entries `key=task` or `key=task@queue`, separated by commas or
/// new lines, blanks around each part ignored. `key` is a topic or an event name.
pub(crate) fn parse_tasks(
    spec: &str,
    default_queue: &str,
) -> Result<Vec<(String, TaskRoute)>, String> {
    const SYNTAX: &str =
        "write `topic=module.task` or `topic=module.task@queue`, entries separated by commas";
    let mut routes: Vec<(String, TaskRoute)> = Vec::new();
    let mut seen = BTreeMap::new();
    for (index, entry) in spec.split([',', '\n']).map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let n = index + 1;
        let Some((key, target)) = entry.split_once('=') else {
            return Err(format!("entry {n} `{entry}` has no `=`; {SYNTAX}"));
        };
        let (key, target) = (key.trim(), target.trim());
        let (task, queue) = match target.split_once('@') {
            Some((task, queue)) => (task.trim(), queue.trim()),
            None => (target, default_queue),
        };
        if key.is_empty() {
            return Err(format!(
                "entry {n} `{entry}` names no topic or event before `=`; {SYNTAX}"
            ));
        }
        if task.is_empty() {
            return Err(format!(
                "entry {n} `{entry}` names no task after `=`; {SYNTAX}"
            ));
        }
        if queue.is_empty() {
            return Err(format!(
                "entry {n} `{entry}` names no queue after `@`; {SYNTAX}"
            ));
        }
        if let Some(bad) = [key, task, queue]
            .into_iter()
            .find(|part| part.chars().any(|c| c.is_whitespace() || c == '='))
        {
            return Err(format!(
                "entry {n} `{entry}`: `{bad}` contains a blank or `=`; {SYNTAX}"
            ));
        }
        if let Some(first) = seen.insert(key.to_owned(), n) {
            return Err(format!(
                "`{key}` is mapped twice (entries {first} and {n}); give each topic or event one task"
            ));
        }
        routes.push((
            key.to_owned(),
            TaskRoute {
                task: task.to_owned(),
                queue: queue.to_owned(),
            },
        ));
    }
    Ok(routes)
}

/// What `consumer list` shows next to a topic: its task, and its queue.
pub(crate) fn describe_topic(config: &Config, topic: &str) -> Option<String> {
    let options = CeleryOptions::from_config(config).ok()?;
    let route = options.find(topic)?;
    Some(format!("task {}@{}", route.task, route.queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(task: &str, queue: &str) -> TaskRoute {
        TaskRoute {
            task: task.into(),
            queue: queue.into(),
        }
    }

    #[test]
    fn entries_map_keys_to_tasks_in_the_default_or_their_own_queue() {
        let routes = parse_tasks(
            " user.mood.created = vectosvc.worker.tasks.process_mood_created ,\norder.paid=billing.tasks.charge@billing,,",
            "celery",
        )
        .unwrap();
        assert_eq!(
            routes,
            [
                (
                    "user.mood.created".to_owned(),
                    route("vectosvc.worker.tasks.process_mood_created", "celery")
                ),
                (
                    "order.paid".to_owned(),
                    route("billing.tasks.charge", "billing")
                ),
            ]
        );
        assert!(parse_tasks("", "celery").unwrap().is_empty());
    }

    #[test]
    fn bad_entries_say_which_and_how_to_write_them() {
        for (spec, says) in [
            ("user.created", "has no `=`"),
            ("=tasks.x", "names no topic"),
            ("a=", "names no task"),
            ("a=tasks.x@", "names no queue"),
            ("a=tasks x", "contains a blank"),
            ("a=t1,a=t2", "mapped twice (entries 1 and 2)"),
        ] {
            let error = parse_tasks(spec, "celery").unwrap_err();
            assert!(error.contains(says), "{spec}: {error}");
        }
        let config = Config::default().setting(TASKS_VARIABLE, "oops");
        match CeleryOptions::from_config(&config) {
            Err(BrokerError::Config { variable, .. }) => assert_eq!(variable, TASKS_VARIABLE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_event_name_routes_before_the_topic() {
        let options = CeleryOptions::new("redis://h")
            .route("user-events", "tasks.any", "celery")
            .route("user.created", "tasks.created", "users");
        assert_eq!(
            options.route_of("user-events", Some("user.created")),
            Some(&route("tasks.created", "users"))
        );
        assert_eq!(
            options.route_of("user-events", Some("user.deleted")),
            Some(&route("tasks.any", "celery"))
        );
        assert_eq!(options.route_of("other", None), None);
    }

    #[test]
    fn the_scheme_picks_the_transport() {
        let config = |url: &str| Config::default().setting(URL_VARIABLE, url);
        let transport = |url: &str| CeleryOptions::from_config(&config(url))?.transport();
        assert_eq!(transport("redis://h:6379/3").unwrap(), Transport::Redis);
        assert_eq!(transport("amqp://u:p@h//").unwrap(), Transport::Amqp);
        assert_eq!(
            CeleryOptions::from_config(&Config::default())
                .unwrap()
                .transport()
                .unwrap(),
            Transport::Amqp,
            "Celery's default broker"
        );
        let error = transport("sqs://key:secret@h").unwrap_err().to_string();
        assert!(
            error.contains(URL_VARIABLE) && !error.contains("secret"),
            "{error}"
        );
        assert!(transport("").is_err(), "set but empty");
        assert!(
            CeleryOptions::from_config(&Config::default().setting(QUEUE_VARIABLE, " ")).is_err()
        );
    }

    #[test]
    fn listings_show_the_task_and_queue_of_a_topic() {
        let config =
            Config::default().setting(TASKS_VARIABLE, "orders.paid=billing.tasks.charge@billing");
        assert_eq!(
            describe_topic(&config, "orders.paid").as_deref(),
            Some("task billing.tasks.charge@billing")
        );
        assert_eq!(describe_topic(&config, "orders.created"), None);
    }
}
