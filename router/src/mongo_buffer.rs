//! The warehouse buffer in MongoDB (Avito's design): one collection per `received_at`
//! hour, `buffer_YYYYMMDDHH`, holding every event (valid and invalid) as a readable
//! document plus `pb`, the exact stored bytes the loader turns into Parquet. `_id` is the
//! event id, so a redelivered event is stored once.
//!
//! Hours close at hour end + grace: the collection `buffer_hours` gets a document
//! `{_id: "YYYYMMDDHH", closed: true, closed_at}`. A late event for a closed hour is
//! inserted all the same; the loader sees the hour's count grow and rebuilds it. Closed
//! hours are dropped `retention_days` after they end, once the loader has marked them
//! committed whole (`loaded_count` equal to the collection's documents); until then they
//! are kept, logged and counted. Dropping an hour moves its `buffer_hours` document to the
//! next `generation` (first, so a crash leaves only a loaded collection to drop again):
//! events that arrive for it later still go to `buffer_YYYYMMDDHH_g<N>`, and the loader
//! adds them to the hour instead of replacing it with them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::{Client, Database};
use weir_proto::event::now_micros;
use weir_proto::hour::{self, HOUR_MICROS};

use crate::metrics as m;
use crate::recipients::mongo::{connect, document, insert};
use crate::recipients::{decode, retry_all, Events, Every, Outcome, ServerError, Sink};

use weir_proto::runtime::buffer::{mongo_collection, mongo_hour_of};
use weir_proto::runtime::mongo_hours::{self, HourMarker, HOURS};

/// The hourly buffer in one MongoDB database.
pub struct MongoBuffer {
    url: String,
    db: String,
    grace: Duration,
    retention_days: u32,
    client: Option<Client>,
    /// What `buffer_hours` said at the last look (re-read every housekeeping round:
    /// other routers may share the buffer).
    markers: BTreeMap<i64, HourMarker>,
    markers_loaded: bool,
    housekeeping_due: Every,
    /// Hours already warned about being kept past retention.
    warned: BTreeSet<i64>,
}

impl MongoBuffer {
    /// A buffer in `db` at `url`.
    pub fn new(url: &str, db: &str, grace: Duration, retention_days: u32) -> MongoBuffer {
        MongoBuffer {
            url: url.to_string(),
            db: db.to_string(),
            grace,
            retention_days,
            client: None,
            markers: BTreeMap::new(),
            markers_loaded: false,
            housekeeping_due: Every::new(Duration::from_secs(5)),
            warned: BTreeSet::new(),
        }
    }

    async fn database(&mut self) -> Result<Database, ServerError> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = connect(&self.url).await?;
                self.client = Some(c.clone());
                c
            }
        };
        let db = client.database(&self.db);
        if !self.markers_loaded {
            self.markers = mongo_hours::read_all(&db).await?;
            self.markers_loaded = true;
        }
        Ok(db)
    }

    /// What `buffer_hours` said of hour `h` at the last look.
    fn marker(&self, h: i64) -> HourMarker {
        self.markers.get(&h).copied().unwrap_or_default()
    }

    /// The generation of an hour's buffer now written.
    fn generation(&self, h: i64) -> u32 {
        self.marker(h).generation
    }

    /// Closes the hours due and drops the hours past retention.
    async fn housekeeping(&mut self) -> Result<(), ServerError> {
        let db = self.database().await?;
        let now = now_micros();
        let names = db.list_collection_names().await?;
        // Other routers writing to the same buffer may have moved an hour on.
        self.markers = mongo_hours::read_all(&db).await?;
        let mut hours = BTreeSet::new();
        for (h, g) in names.iter().filter_map(|n| mongo_hour_of(n)) {
            let current = self.generation(h);
            if g + 1 == current {
                // Loaded whole and moved past; a crash came before the drop. Dropped only
                // when it still holds exactly what was loaded: a late event another router
                // inserted there since is kept (and logged), never dropped.
                let name = mongo_collection(h, g);
                let coll = db.collection::<Document>(&name);
                let count = coll
                    .count_documents(doc! {})
                    .await
                    .map_err(ServerError::mongo(format!("count the documents of {name}")))?
                    as i64;
                if self.marker(h).dropped_count == Some(count) {
                    coll.drop().await.map_err(ServerError::mongo(format!("drop {name}")))?;
                } else if self.warned.insert(h) {
                    tracing::error!(collection = %name, documents = count, "a collection of an hour already loaded and dropped holds events that were not loaded; keeping it (move its documents to the current generation's collection and load the hour)");
                }
            } else if g == current {
                hours.insert(h);
            }
        }
        let grace = self.grace.as_micros() as i64;
        for &h in &hours {
            if (h + 1) * HOUR_MICROS + grace <= now && !self.marker(h).closed {
                db.collection::<Document>(HOURS)
                    .update_one(
                        doc! {"_id": hour::compact(h)},
                        doc! {"$set": {"closed": true, "closed_at": weir_proto::event::format_micros(now)}},
                    )
                    .upsert(true)
                    .await
                    .map_err(ServerError::mongo(format!("close hour {}", hour::display(h))))?;
                self.markers.entry(h).or_default().closed = true;
                metrics::counter!(m::HOURS_CLOSED).increment(1);
                tracing::info!(hour = %hour::display(h), "hour closed (MongoDB buffer)");
            }
        }
        let keep_from = hour::of_micros(now) - i64::from(self.retention_days.max(1)) * 24;
        let past: Vec<i64> = hours
            .iter()
            .copied()
            .filter(|h| *h < keep_from && self.marker(*h).closed)
            .collect();
        // Dropped only once the loader committed every document (its `loaded_count`).
        let mut expired = Vec::new();
        let mut kept = 0u64;
        for h in past {
            let loaded = self.marker(h).loaded_count;
            let count = db
                .collection::<Document>(&mongo_collection(h, self.generation(h)))
                .count_documents(doc! {})
                .await
                .map_err(ServerError::mongo(format!(
                    "count the documents of hour {}",
                    hour::display(h)
                )))? as i64;
            if loaded == Some(count) {
                expired.push((h, count));
            } else {
                kept += 1;
                if self.warned.insert(h) {
                    tracing::warn!(hour = %hour::display(h), documents = count, loaded = ?loaded, "hour is past retention_days but the loader has not committed all of it; keeping it (MongoDB buffer)");
                }
            }
        }
        metrics::gauge!(m::HOURS_KEPT_UNLOADED).set(kept as f64);
        for (h, count) in expired {
            let g = self.generation(h);
            db.collection::<Document>(HOURS)
                .update_one(
                    doc! {"_id": hour::compact(h)},
                    doc! {"$set": {"generation": i64::from(g) + 1, "dropped_count": count}, "$unset": {"closed": "", "closed_at": "", "loaded_count": ""}},
                )
                .await
                .map_err(ServerError::mongo(format!("mark hour {} expired", hour::display(h))))?;
            self.markers.insert(
                h,
                HourMarker {
                    generation: g + 1,
                    dropped_count: Some(count),
                    ..HourMarker::default()
                },
            );
            let name = mongo_collection(h, g);
            db.collection::<Document>(&name)
                .drop()
                .await
                .map_err(ServerError::mongo(format!("drop {name}")))?;
            metrics::counter!(m::HOURS_EXPIRED).increment(1);
            tracing::info!(hour = %hour::display(h), "buffer past retention dropped (MongoDB buffer)");
        }
        Ok(())
    }
}

impl Sink for MongoBuffer {
    async fn deliver(&mut self, events: &Events) -> Vec<Outcome> {
        let db = match self.database().await {
            Ok(db) => db,
            Err(e) => return retry_all(events.len(), &e.to_string()),
        };
        let mut out = vec![Outcome::Delivered; events.len()];
        let mut groups: BTreeMap<i64, (Vec<usize>, Vec<Document>)> = BTreeMap::new();
        for (i, ev) in events.iter().enumerate() {
            let Some(view) = decode(ev, &mut out[i]) else { continue };
            let mut d = match document(&view) {
                Ok(d) => d,
                Err(e) => {
                    out[i] = Outcome::Refuse(format!("cannot convert the event to BSON: {e}"));
                    continue;
                }
            };
            d.insert(
                "pb",
                Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: ev.to_vec(),
                },
            );
            let g = groups.entry(hour::of_micros(view.received_at)).or_default();
            g.0.push(i);
            g.1.push(d);
        }
        let mut buffered = 0u64;
        // An hour past retention may have been dropped (and moved to its next
        // generation) by another router since this one looked: read its marker now. Only
        // such late events pay for the read.
        let keep_from = hour::of_micros(now_micros()) - i64::from(self.retention_days.max(1)) * 24;
        for (h, (idx, docs)) in groups {
            if h < keep_from {
                match mongo_hours::read(&db, h).await {
                    Ok(m) => {
                        self.markers.insert(h, m);
                    }
                    Err(e) => {
                        let why = format!("MongoDB: {e}");
                        for i in idx {
                            out[i] = Outcome::Retry(why.clone());
                        }
                        continue;
                    }
                }
            }
            let late = self.marker(h).closed;
            let n = docs.len() as u64;
            let outcomes = insert(
                &db.collection::<Document>(&mongo_collection(h, self.generation(h))),
                docs,
            )
            .await;
            let ok = outcomes.iter().filter(|o| **o == Outcome::Delivered).count() as u64;
            buffered += ok;
            if late && ok > 0 {
                metrics::counter!(m::LATE).increment(ok);
                tracing::info!(hour = %hour::display(h), events = n, "late events for a closed hour; it will be reloaded");
            }
            for (i, o) in idx.into_iter().zip(outcomes) {
                out[i] = o;
            }
        }
        metrics::counter!(m::BUFFERED).increment(buffered);
        out
    }

    async fn tick(&mut self) {
        if !self.housekeeping_due.due() {
            return;
        }
        if let Err(e) = self.housekeeping().await {
            tracing::error!(error = %e, "MongoDB buffer housekeeping failed; trying again in 5 s");
        }
    }
}
