//! The example service's AsyncAPI document (issue 25, done-when 3): `example-consumer
//! asyncapi`, in JSON and in YAML, passes `@asyncapi/parser` validation with no error, and
//! lists every registered handler, `#[event]`, typed event and dead-letter topic.
//!
//! Needs node and the parser in tests/asyncapi/node_modules (`scripts/install-asyncapi.sh`,
//! which scripts/test.sh runs); fails, never skips, without them. Connects to nothing.
//!
//! Run with: cargo test -p messaging-examples --test asyncapi

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

// Links the service's registrations into this test too, to compare with the registry.
use messaging_examples as _;

const CONSUMER: &str = env!("CARGO_BIN_EXE_example-consumer");
const VALIDATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/asyncapi/validate.mjs"
);
const PASSWORD: &str = "s3cret-pa55";

/// Runs the example's consumer with a RabbitMQ URL holding a password.
fn consumer(args: &[&str]) -> String {
    let output = Command::new(CONSUMER)
        .args(args)
        .env("MESSAGING_BACKEND", "rabbitmq")
        .env(
            "RABBITMQ_URL",
            format!("amqp://orders:{PASSWORD}@127.0.0.1:5672/shop"),
        )
        .env("RABBITMQ_EXCHANGE", "shop-events")
        .env_remove("MESSAGING_DLQ_TOPIC")
        .output()
        .expect("the example's consumer runs");
    assert_success("example-consumer", args, &output);
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn assert_success(what: &str, args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "{what} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Validates `document` with the AsyncAPI parser and returns it as the parser's YAML reader
/// read it.
fn validate(document: &str) -> Value {
    let mut child = Command::new("node")
        .args([VALIDATE, "--to-json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "node runs (install it: apt-get install nodejs npm; then scripts/install-asyncapi.sh)",
        );
    // A node that exits early (no parser) closes its input: its status and message tell why.
    let _ = child.stdin.take().unwrap().write_all(document.as_bytes());
    let output = child.wait_with_output().unwrap();
    assert_success("validate.mjs", &[], &output);
    serde_json::from_slice(&output.stdout).expect("validate.mjs prints the document as JSON")
}

#[test]
fn json_and_yaml_documents_pass_the_asyncapi_parser_and_agree() {
    let json = consumer(&["asyncapi"]);
    let yaml = consumer(&["asyncapi", "--format", "yaml"]);
    let document: Value = serde_json::from_str(&json).expect("JSON output");
    assert_eq!(validate(&json), document);
    assert_eq!(
        validate(&yaml),
        document,
        "the YAML reads as the JSON:\n{yaml}"
    );

    // The server is the configured broker, its password masked.
    for text in [&json, &yaml] {
        assert!(!text.contains(PASSWORD), "the password leaked:\n{text}");
    }
    let server = &document["servers"]["rabbitmq"];
    assert_eq!(server["protocol"], "amqp");
    assert_eq!(server["host"], "127.0.0.1:5672");
    assert_eq!(server["pathname"], "/shop");
    let description = server["description"].as_str().unwrap();
    assert!(
        description.contains("amqp://orders:***@127.0.0.1:5672/shop"),
        "{description}"
    );

    // The broker's bindings: the exchange and vhost of a channel, a group's queue.
    let channel = &document["channels"]["orders.created"];
    assert_eq!(
        channel["bindings"]["amqp"]["exchange"]["name"],
        "shop-events"
    );
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["vhost"], "shop");
    let payments = &document["operations"]["messaging_examples.handlers.process_payment"];
    assert_eq!(
        payments["bindings"]["amqp"]["x-queue"]["name"],
        "shop-events.group.payments"
    );

    // Payload schemas (the example enables `schemars`): `user.created`'s data is a `User`.
    let data = &document["components"]["messages"]["user.created"]["payload"]["properties"]["data"];
    assert_eq!(data["title"], "User", "{data:#}");
    assert!(data["properties"]["email"].is_object(), "{data:#}");
}

#[test]
fn the_document_lists_every_handler_event_and_dead_letter_topic() {
    let document: Value = serde_json::from_str(&consumer(&["asyncapi"])).unwrap();
    let operations = document["operations"].as_object().unwrap();
    let channels = document["channels"].as_object().unwrap();
    let address = |reference: &Value| {
        let id = reference["$ref"]
            .as_str()
            .unwrap()
            .trim_start_matches("#/channels/");
        channels[id]["address"].as_str().unwrap().to_owned()
    };

    // Every handler `consumer list` shows has a receive operation on each of its topics, and
    // every dead-letter topic it shows has its channel.
    let list = consumer(&["list"]);
    let mut rows = list.lines().map(|line| {
        line.split("  ")
            .filter(|cell| !cell.is_empty())
            .map(str::trim)
            .collect::<Vec<_>>()
    });
    let header = rows.next().unwrap();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (handler, topics, dlq) = (column("HANDLER"), column("TOPICS"), column("DLQ"));
    let mut listed = 0;
    for row in rows {
        listed += 1;
        for topic in row[topics].split(',') {
            let found = operations.values().any(|op| {
                op["action"] == "receive"
                    && op["x-messaging-handler"] == row[handler]
                    && address(&op["channel"]) == topic
            });
            assert!(found, "no receive operation of {} on {topic}", row[handler]);
        }
        for dlq_topic in row[dlq].split(',') {
            let channel = channels
                .values()
                .find(|c| c["address"] == dlq_topic)
                .unwrap_or_else(|| panic!("no channel for the DLQ {dlq_topic}"));
            assert!(
                channel["x-messaging-dead-letter-of"].is_array(),
                "{channel:#}"
            );
            let dead_lettering = operations.values().any(|op| {
                op["x-messaging-kind"] == "dead_letter" && address(&op["channel"]) == dlq_topic
            });
            assert!(dead_lettering, "no dead-lettering send on {dlq_topic}");
        }
    }
    let registered = messaging_core::registered_handlers();
    assert_eq!(listed, registered.len(), "{list}");
    let receivers: BTreeSet<&str> = operations
        .values()
        .filter(|op| op["action"] == "receive")
        .map(|op| op["x-messaging-handler"].as_str().unwrap())
        .collect();
    let handlers: BTreeSet<&str> = registered.iter().map(|h| h.qualified_name()).collect();
    assert_eq!(receivers, handlers);

    // Every `#[event]` and typed event has a send operation of its event on its topic.
    let events = messaging_core::registered_events();
    let functions = events
        .iter()
        .filter(|e| matches!(e.source, messaging_core::EventSource::Function(_)))
        .count();
    let types = events.len() - functions;
    assert!(functions >= 2 && types >= 4, "{events:?}");
    let messages = &document["components"]["messages"];
    for event in &events {
        let publisher = format!("{}::{}", event.module_path, event.source_name());
        let op = operations
            .values()
            .find(|op| op["action"] == "send" && op["x-messaging-publisher"] == publisher.as_str())
            .unwrap_or_else(|| panic!("no send operation of {publisher}"));
        assert_eq!(address(&op["channel"]), event.topic);
        let message = op["messages"][0]["$ref"].as_str().unwrap();
        let id = message.rsplit('/').next().unwrap();
        assert_eq!(messages[id]["name"], event.name, "{publisher}");
        assert_eq!(
            messages[id]["headers"]["properties"]["x-event-name"]["const"],
            event.name
        );
    }
}
