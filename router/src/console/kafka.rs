//! The console's view of the topic in Kafka mode: a consumer outside any group, assigned
//! every partition from its end, so each router's console sees every event (not only its
//! share of the partitions) and commits nothing. New partitions are picked up within a
//! minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use weir_proto::runtime::kafka::{KafkaConfig, QuietContext};

use super::Console;

/// Reads `cfg.topic` into `console` until `stop` turns true.
pub async fn tap(cfg: KafkaConfig, console: Arc<Console>, mut stop: watch::Receiver<bool>) {
    let mut c = cfg.client_config("weir-router-console");
    // A group id is required by the client, but with assign() no group is joined and,
    // with nothing committed, none is ever created on the broker.
    c.set("group.id", format!("{}.console", cfg.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "4096");
    let consumer: Arc<StreamConsumer<QuietContext>> = match c.create_with_context(QuietContext::default()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "the console cannot read the Kafka topic; its tail and stats stay empty");
            return;
        }
    };
    let mut assigned = 0usize;
    let mut checked = Instant::now() - Duration::from_secs(3600);
    loop {
        if checked.elapsed() >= Duration::from_secs(60) || assigned == 0 {
            checked = Instant::now();
            assigned = assign(&consumer, &cfg.topic, assigned).await;
        }
        tokio::select! {
            m = consumer.recv() => match m {
                Ok(m) => {
                    if let Some(v) = m.payload() {
                        console.observe_event(Bytes::copy_from_slice(v));
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            },
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(if assigned == 0 { 1 } else { 60 })) => {}
        }
    }
}

/// Assigns partitions `from..` of `topic` at their end; returns how many are assigned.
async fn assign(consumer: &Arc<StreamConsumer<QuietContext>>, topic: &str, from: usize) -> usize {
    let md = {
        let (consumer, topic) = (consumer.clone(), topic.to_string());
        // A blocking call: off the async workers.
        let md =
            tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))).await;
        match md {
            Ok(Ok(md)) => md,
            _ => return from,
        }
    };
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return from;
    };
    let n = t.partitions().len();
    if n <= from {
        return from;
    }
    let mut list = match consumer.assignment() {
        Ok(l) => l,
        Err(_) => TopicPartitionList::new(),
    };
    for p in from..n {
        if list.add_partition_offset(topic, p as i32, Offset::End).is_err() {
            return from;
        }
    }
    match consumer.assign(&list) {
        Ok(()) => n,
        Err(_) => from,
    }
}
