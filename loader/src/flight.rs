//! Arrow Flight for bulk loads (`weir loader serve`): a warehouse's loaded hours as
//! Arrow record batches.
//!
//! - `ListFlights`: one flight per event version that has data; one endpoint per hour
//!   (its ticket fetches that hour); `app_metadata` is `{"hours": ["2026-11-22T13", ...]}`.
//! - `GetFlightInfo`: descriptor command `{"event": ..., "version": ...}`, optionally with
//!   `"from"` and `"to"` hours.
//! - `DoGet`: ticket `{"event": ..., "version": ..., "from": HOUR, "to": HOUR}` streams the
//!   rows of those hours. A bad ticket gets `INVALID_ARGUMENT` saying what is wrong.
//!
//! Hours and files come from the manifests, so only committed hours are served. Files are
//! read on a blocking thread into a bounded channel: memory stays bounded whatever the
//! range asked for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use arrow_schema::SchemaRef;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status, Streaming};
use weir_proto::{hour, Catalog};

use crate::commit;
use crate::schema;

/// What a ticket (or a descriptor command) asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TicketSpec {
    /// Event name.
    pub event: String,
    /// Event version.
    pub version: u32,
    /// First hour, like `2026-11-22T13` (UTC); all hours when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Last hour, inclusive; `from` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// The Flight service over one warehouse.
#[derive(Clone)]
pub struct WarehouseFlight {
    warehouse: PathBuf,
    catalog: Arc<ArcSwap<Catalog>>,
}

/// Loaded hours of one event version: hour -> (file, rows).
type Hours = BTreeMap<i64, Vec<(PathBuf, u64)>>;

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

impl WarehouseFlight {
    /// A service over `warehouse`, with schemas from `catalog`.
    pub fn new(warehouse: PathBuf, catalog: Arc<ArcSwap<Catalog>>) -> Self {
        WarehouseFlight { warehouse, catalog }
    }

    /// Every loaded (event, version) with its hours, from the manifests.
    fn inventory(&self) -> Result<BTreeMap<(String, u32), Hours>, Status> {
        let mut out: BTreeMap<(String, u32), Hours> = BTreeMap::new();
        let hours = commit::loaded_hours(&self.warehouse).map_err(|e| Status::internal(e.to_string()))?;
        for h in hours {
            let Ok(Some(m)) = commit::read_manifest(&self.warehouse, h) else {
                continue;
            };
            for f in m.files {
                if let (Some(e), Some(v)) = (f.event, f.version) {
                    out.entry((e, v))
                        .or_default()
                        .entry(h)
                        .or_default()
                        .push((self.warehouse.join(&f.path), f.rows));
                }
            }
        }
        Ok(out)
    }

    fn schema_of(&self, event: &str, version: u32) -> Result<SchemaRef, Status> {
        let catalog = self.catalog.load();
        let Some(def) = catalog.events.get(event) else {
            return Err(bad(format!("unknown event {event:?}")));
        };
        if def.version(version).is_none() {
            let latest = def.versions.last().map_or(0, |v| v.version);
            return Err(bad(format!(
                "event {event:?} has no version {version} (latest is {latest})"
            )));
        }
        Ok(schema::event_schema(&catalog.columns(event, version)))
    }

    /// Parses and checks a ticket or descriptor command.
    pub fn parse_spec(&self, bytes: &[u8]) -> Result<(TicketSpec, Option<(i64, i64)>), Status> {
        let spec: TicketSpec = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "the ticket must be JSON like {{\"event\": \"item.viewed\", \"version\": 2, \"from\": \"2026-11-22T13\", \"to\": \"2026-11-22T13\"}}: {e}"
            ))
        })?;
        self.schema_of(&spec.event, spec.version)?;
        let range = match (&spec.from, &spec.to) {
            (None, None) => None,
            (Some(f), t) => {
                let from = hour::parse(f).map_err(|e| bad(format!("from: {e}")))?;
                let to = match t {
                    Some(t) => hour::parse(t).map_err(|e| bad(format!("to: {e}")))?,
                    None => from,
                };
                if from > to {
                    return Err(bad(format!("from ({f}) is after to")));
                }
                Some((from, to))
            }
            (None, Some(_)) => return Err(bad("to without from: give both hours, or neither for all")),
        };
        Ok((spec, range))
    }

    fn info(&self, event: &str, version: u32, hours: &Hours, range: Option<(i64, i64)>) -> Result<FlightInfo, Status> {
        let schema = self.schema_of(event, version)?;
        let picked: Vec<(i64, u64)> = hours
            .iter()
            .filter(|(h, _)| range.is_none_or(|(f, t)| (f..=t).contains(*h)))
            .map(|(h, files)| (*h, files.iter().map(|f| f.1).sum()))
            .collect();
        let mut endpoints = Vec::new();
        for (h, _) in &picked {
            let spec = TicketSpec {
                event: event.into(),
                version,
                from: Some(hour::display(*h)),
                to: Some(hour::display(*h)),
            };
            let ticket = serde_json::to_vec(&spec).map_err(|e| Status::internal(e.to_string()))?;
            endpoints.push(FlightEndpoint::new().with_ticket(Ticket::new(ticket)));
        }
        let cmd = serde_json::to_vec(&TicketSpec {
            event: event.into(),
            version,
            from: None,
            to: None,
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        let hours_meta =
            serde_json::json!({"hours": picked.iter().map(|(h, _)| hour::display(*h)).collect::<Vec<_>>()});
        FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))
            .map(|i| {
                i.with_descriptor(FlightDescriptor::new_cmd(cmd))
                    .with_endpoints(endpoints)
                    .with_total_records(picked.iter().map(|p| p.1 as i64).sum())
                    .with_ordered(true)
                    .with_app_metadata(hours_meta.to_string().into_bytes())
            })
    }
}

/// NOT_FOUND for a ticket that matches no loaded hour, naming the hours there are.
fn not_found(spec: &TicketSpec, range: Option<(i64, i64)>, hours: &Hours) -> Status {
    let what = format!("{} version {}", spec.event, spec.version);
    let asked = match range {
        Some((f, t)) if f == t => format!(" in {}", hour::display(f)),
        Some((f, t)) => format!(" from {} to {}", hour::display(f), hour::display(t)),
        None => String::new(),
    };
    let have = match (hours.keys().next(), hours.keys().next_back()) {
        (Some(_), Some(_)) if hours.len() <= 12 => format!(
            "loaded hours of it: {}",
            hours.keys().map(|h| hour::display(*h)).collect::<Vec<_>>().join(", ")
        ),
        (Some(first), Some(last)) => format!(
            "{} hours of it are loaded, from {} to {}",
            hours.len(),
            hour::display(*first),
            hour::display(*last)
        ),
        _ => "no hour of it is loaded yet (`weir loader hours` lists what is buffered and loaded)".to_string(),
    };
    Status::not_found(format!("no loaded hour of {what}{asked}; {have}"))
}

fn read_files(files: Vec<PathBuf>, tx: tokio::sync::mpsc::Sender<Result<RecordBatch, FlightError>>) {
    for path in files {
        let reader = std::fs::File::open(&path)
            .map_err(|e| FlightError::ExternalError(Box::new(e)))
            .and_then(|f| {
                ParquetRecordBatchReaderBuilder::try_new(f)
                    .and_then(|b| b.with_batch_size(8192).build())
                    .map_err(|e| FlightError::ExternalError(Box::new(e)))
            });
        match reader {
            Ok(reader) => {
                for batch in reader {
                    let item = batch.map_err(FlightError::Arrow);
                    if tx.blocking_send(item).is_err() {
                        return; // the client went away
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl FlightService for WarehouseFlight {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "no handshake: the Flight endpoint is read-only and needs none",
        ))
    }

    async fn list_flights(&self, _: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let mut infos = Vec::new();
        for ((event, version), hours) in self.inventory()? {
            match self.info(&event, version, &hours, None) {
                Ok(i) => infos.push(Ok(i)),
                // Loaded under an older catalog that no longer has it: not served.
                Err(e) if e.code() == tonic::Code::InvalidArgument => {}
                Err(e) => infos.push(Err(e)),
            }
        }
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let (spec, range) = self.parse_spec(&request.into_inner().cmd)?;
        let inventory = self.inventory()?;
        let hours = inventory
            .get(&(spec.event.clone(), spec.version))
            .cloned()
            .unwrap_or_default();
        Ok(Response::new(self.info(&spec.event, spec.version, &hours, range)?))
    }

    async fn poll_flight_info(&self, _: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("use GetFlightInfo: every flight is complete"))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let (spec, _) = self.parse_spec(&request.into_inner().cmd)?;
        let schema = self.schema_of(&spec.event, spec.version)?;
        let options = arrow_ipc::writer::IpcWriteOptions::default();
        let result: SchemaResult = arrow_flight::SchemaAsIpc::new(&schema, &options)
            .try_into()
            .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let (spec, range) = self.parse_spec(&request.into_inner().ticket)?;
        let schema = self.schema_of(&spec.event, spec.version)?;
        let inventory = self.inventory()?;
        let empty = Hours::new();
        let hours = inventory.get(&(spec.event.clone(), spec.version)).unwrap_or(&empty);
        let files: Vec<PathBuf> = hours
            .iter()
            .filter(|(h, _)| range.is_none_or(|(f, t)| (f..=t).contains(*h)))
            .flat_map(|(_, files)| files.iter().map(|f| f.0.clone()))
            .collect();
        if files.is_empty() {
            return Err(not_found(&spec, range, hours));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || read_files(files, tx));
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(stream.boxed()))
    }

    async fn do_put(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "the warehouse is read-only over Flight: events come in through the collector",
        ))
    }

    async fn do_action(&self, _: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("no actions"))
    }

    async fn list_actions(&self, _: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(futures::stream::empty().boxed()))
    }

    async fn do_exchange(&self, _: Request<Streaming<FlightData>>) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("no exchange"))
    }
}

/// Whether a call carries `authorization: Bearer <token>` (always true without a token).
fn authorized(token: Option<&str>, metadata: &tonic::metadata::MetadataMap) -> bool {
    let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
    weir_proto::secret::bearer_matches(token, header)
}

/// Serves Flight on `listener` until `shutdown` turns true. With `token`, every call
/// must carry the metadata `authorization: Bearer <token>` (`[loader] flight_token`);
/// others get UNAUTHENTICATED.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: WarehouseFlight,
    token: Option<String>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let check = move |req: Request<()>| {
        if authorized(token.as_deref(), req.metadata()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "this Flight server requires `authorization: Bearer <token>` ([loader] flight_token)",
            ))
        }
    };
    tonic::transport::Server::builder()
        .add_service(FlightServiceServer::with_interceptor(service, check))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
