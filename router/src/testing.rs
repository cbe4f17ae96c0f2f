//! What the router's unit tests build their logs and catalogs from.

use prost::Message;
use weir_proto::event::now_micros;
use weir_proto::pb::{Event, EventBatch};
use weir_proto::Catalog;

/// A framed batch record of events `(id, event name, valid)`, all of environment `web`.
pub fn batch(events: &[(&str, &str, bool)]) -> Vec<u8> {
    let b = EventBatch {
        batch_id: events.iter().map(|e| e.0).collect::<Vec<_>>().join(","),
        collector: "c".into(),
        events: events
            .iter()
            .map(|(id, event, valid)| Event {
                id: id.to_string(),
                event: event.to_string(),
                version: 1,
                env: "web".into(),
                received_at: now_micros(),
                fields: bytes::Bytes::from_static(b"{}"),
                valid: *valid,
                ..Default::default()
            })
            .collect(),
    };
    let mut framed = Vec::new();
    weir_proto::record::encode_into(&mut framed, &b.encode_to_vec());
    framed
}

/// A catalog of the events `(name, recipient it routes to)`, each with one version for
/// environment `web`.
pub fn catalog(events: &[(&str, Option<&str>)]) -> Catalog {
    let mut text = String::from("[environments.web]\nkind = \"frontend\"\n");
    for (name, recipient) in events {
        text.push_str(&format!("[events.\"{name}\"]\nowner = \"t\"\n"));
        if let Some(r) = recipient {
            text.push_str(&format!("recipients = [\"{r}\"]\n"));
        }
        text.push_str(&format!(
            "[[events.\"{name}\".versions]]\nversion = 1\nenvironments = [\"web\"]\n"
        ));
    }
    Catalog::from_files(vec![("c.toml".into(), text)]).expect("a valid test catalog")
}
