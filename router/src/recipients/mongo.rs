//! The MongoDB recipient: inserts each event into `db` / `collection` (a template of
//! `{event}` / `{event_ident}`) with `_id` = the event id, so a redelivery is a duplicate-key
//! error that counts as delivered: Mongo ends up with one document per event.
//!
//! Also the document shape shared with the Mongo hourly buffer ([`document`]).

use std::collections::BTreeMap;

use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::Client;

use super::{decode, render_template, retry_all, Events, Outcome, ServerError, Sink};
use weir_proto::event::EventView;

/// `kind = "mongo"`: a MongoDB collection per template.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Connection string.
    pub url: String,
    /// Database.
    pub db: String,
    /// Collection template (`{event}`, `{event_ident}`).
    pub collection: String,
    /// Once this much of the router log waits for this recipient, intake answers 503
    /// (collectors keep spooling) until it catches up.
    #[serde(default = "super::defaults::max_backlog")]
    pub max_backlog_bytes: u64,
    /// Most events sent to the server in one go.
    #[serde(default = "super::defaults::batch_events")]
    pub batch_events: usize,
}

impl super::Kind for Config {
    fn limits(&self) -> (u64, usize) {
        (self.max_backlog_bytes, self.batch_events)
    }
    fn validate(&self) -> Result<(), weir_proto::InvalidSetting> {
        super::check_template(&self.collection).map_err(|e| weir_proto::InvalidSetting::new("collection", e))
    }
    fn spawn(&self, _name: &str, run: super::RunArgs) -> tokio::task::JoinHandle<()> {
        run.spawn(MongoSink::new(&self.url, &self.db, &self.collection))
    }
}

/// Server codes that mean "try again": the server is stepping down, shutting down,
/// unreachable, overloaded, or the credentials are wrong (an operator can fix those
/// without the events being at fault).
const RETRY_CODES: &[i32] = &[
    6, 7, 13, 18, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 16500, 46, 112, 117,
];

/// Duplicate key: the document is already there.
pub const DUPLICATE_KEY: i32 = 11000;

/// A connection to one MongoDB deployment, made on first use.
pub struct MongoSink {
    url: String,
    db: String,
    collection: String,
    client: Option<Client>,
}

impl MongoSink {
    /// A sink inserting into `db` / `collection` at `url`.
    pub fn new(url: &str, db: &str, collection: &str) -> MongoSink {
        MongoSink {
            url: url.to_string(),
            db: db.to_string(),
            collection: collection.to_string(),
            client: None,
        }
    }
}

/// Connects a client with short timeouts (the runner retries, so a dead server should
/// fail an attempt quickly rather than hang it).
pub async fn connect(url: &str) -> Result<Client, ServerError> {
    let bad_url = |e: mongodb::error::Error| ServerError::BadUrl {
        server: "MongoDB",
        url: weir_proto::secret::redact_url(url),
        message: e.to_string(),
    };
    let mut opts = mongodb::options::ClientOptions::parse(url).await.map_err(bad_url)?;
    let short = std::time::Duration::from_secs(5);
    opts.server_selection_timeout.get_or_insert(short);
    opts.connect_timeout.get_or_insert(short);
    opts.app_name.get_or_insert_with(|| "weir-router".into());
    Client::with_options(opts).map_err(bad_url)
}

/// Converts a stored event into its MongoDB document: `_id` (the event id), `event`,
/// `version`, `env`, `received_at` (a date), `received_at_us` (exact microseconds),
/// `client_ts`, `collector`, `fields` (a sub-document), `valid`, `errors`, and `context`
/// when present.
pub fn document(view: &EventView<'_>) -> Result<Document, String> {
    let fields: Bson = match serde_json::from_slice::<serde_json::Value>(view.fields) {
        Ok(v @ serde_json::Value::Object(_)) => Bson::try_from(v).map_err(|e| format!("fields: {e}"))?,
        _ => Bson::String(String::from_utf8_lossy(view.fields).into_owned()),
    };
    let mut d = doc! {
        "_id": view.id,
        "event": view.event,
        "version": i64::from(view.version),
        "env": view.env,
        "received_at": bson::DateTime::from_millis(view.received_at.div_euclid(1000)),
        "received_at_us": view.received_at,
        "client_ts": view.client_ts.map(|t| bson::DateTime::from_millis(t.div_euclid(1000))),
        "collector": view.collector,
        "fields": fields,
        "valid": view.valid,
        "errors": view.errors.iter().map(|e| Bson::String(e.to_string())).collect::<Vec<_>>(),
    };
    if !view.context.is_empty() {
        let ctx: Document = view
            .context
            .iter()
            .map(|(k, v)| (k.to_string(), Bson::String(v.to_string())))
            .collect();
        d.insert("context", ctx);
    }
    if !view.raw.is_empty() {
        d.insert("raw", String::from_utf8_lossy(view.raw).into_owned());
    }
    Ok(d)
}

/// Sorts an insert error into per-document outcomes for `n` documents.
pub fn classify(err: &MongoError, n: usize) -> Vec<Outcome> {
    match err.kind.as_ref() {
        ErrorKind::InsertMany(e) => {
            let mut out = vec![Outcome::Delivered; n];
            if let Some(wce) = &e.write_concern_error {
                let reason = format!("write concern not met: {}", wce.message);
                return retry_all(n, &reason);
            }
            for we in e.write_errors.iter().flatten() {
                if we.index >= n || we.code == DUPLICATE_KEY {
                    continue;
                }
                out[we.index] = if RETRY_CODES.contains(&we.code) {
                    Outcome::Retry(format!("MongoDB error {}: {}", we.code, we.message))
                } else {
                    Outcome::Refuse(format!(
                        "MongoDB refused the document: error {}: {}",
                        we.code, we.message
                    ))
                };
            }
            out
        }
        ErrorKind::Command(c) if !RETRY_CODES.contains(&c.code) && !err.contains_label("RetryableWriteError") => {
            let reason = format!(
                "MongoDB refused the insert: {} ({}): {}",
                c.code_name, c.code, c.message
            );
            vec![Outcome::Refuse(reason); n]
        }
        ErrorKind::BsonSerialization(_) | ErrorKind::InvalidArgument { .. } => {
            vec![Outcome::Refuse(format!("cannot write the document: {err}")); n]
        }
        _ => retry_all(n, &format!("MongoDB: {err}")),
    }
}

/// Inserts `docs` into `coll` unordered and returns one outcome per document.
pub async fn insert(coll: &mongodb::Collection<Document>, docs: Vec<Document>) -> Vec<Outcome> {
    let n = docs.len();
    match coll.insert_many(docs).ordered(false).await {
        Ok(_) => vec![Outcome::Delivered; n],
        Err(e) => classify(&e, n),
    }
}

impl Sink for MongoSink {
    async fn deliver(&mut self, events: &Events) -> Vec<Outcome> {
        if self.client.is_none() {
            match connect(&self.url).await {
                Ok(c) => self.client = Some(c),
                Err(e) => return retry_all(events.len(), &e.to_string()),
            }
        }
        let Some(client) = self.client.as_ref() else {
            return retry_all(events.len(), "no MongoDB client");
        };
        let db = client.database(&self.db);
        let mut out = vec![Outcome::Delivered; events.len()];
        // One insert per collection; remember which event each document came from.
        let mut groups: BTreeMap<String, (Vec<usize>, Vec<Document>)> = BTreeMap::new();
        for (i, ev) in events.iter().enumerate() {
            let Some(view) = decode(ev, &mut out[i]) else { continue };
            match document(&view) {
                Ok(d) => {
                    let g = groups.entry(render_template(&self.collection, view.event)).or_default();
                    g.0.push(i);
                    g.1.push(d);
                }
                Err(e) => out[i] = Outcome::Refuse(format!("cannot convert the event to BSON: {e}")),
            }
        }
        for (name, (idx, docs)) in groups {
            let outcomes = insert(&db.collection::<Document>(&name), docs).await;
            for (i, o) in idx.into_iter().zip(outcomes) {
                out[i] = o;
            }
        }
        out
    }
}
