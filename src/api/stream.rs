//! `GET /api/v1/events/stream`: the history as it happens, as Server-Sent
//! Events, resumable from `Last-Event-ID` without gaps.
//!
//! The stream reads `resource_events` by `seq`, the same rows the history
//! lists show. A sequence number is taken when a row is written, not when
//! its transaction commits, so a later `seq` can become visible before an
//! earlier one. The stream therefore sends only an unbroken run of `seq`s:
//! it waits at a hole until the row appears or until a later row is older
//! than [`HOLE_WAIT`] (a transaction that rolled back leaves a hole for
//! good; the service's transactions commit within milliseconds of writing
//! an event). Every `id:` it sends thus covers everything before it.
//!
//! It wakes when an operation ends (NOTIFY on the operations channel) and
//! otherwise looks every half second. A client that reads slowly holds no
//! database connection (one is taken per read, between sends) and at most
//! one batch in memory; [`MAX_STREAMS`] streams may be open per process.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::Query;
use super::fleet::FleetEventResponse;
use crate::app::AppState;
use crate::db;
use crate::db::events::FleetEvent;
use crate::domain::Caller;
use crate::push::{EVENT_TYPES, PAYLOAD_VERSION};

/// How long the stream waits at a hole in `seq` before it goes past it.
pub const HOLE_WAIT: Duration = Duration::from_secs(10);
/// The longest wait between looks when nothing wakes the stream.
const POLL: Duration = Duration::from_millis(500);
/// Rows read per look.
const BATCH: i64 = 200;
/// Streams open at once per process; more are refused with 503.
pub const MAX_STREAMS: usize = 128;
/// Keep-alive comments, so proxies and clients see the stream is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn streams() -> &'static Arc<Semaphore> {
    static STREAMS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    STREAMS.get_or_init(|| Arc::new(Semaphore::new(MAX_STREAMS)))
}

/// Filters of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Only events of this resource.
    pub resource_id: Option<Uuid>,
    /// Only events of resources of this kind.
    pub kind: Option<String>,
    /// Only these event types, separated by commas: `operation.succeeded`,
    /// `operation.failed`, `operation.cancelled`, `resource.state_changed`,
    /// `resource.deleted`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Resume after this event id (the `Last-Event-ID` header wins when
    /// both are sent); without either, the stream starts with what happens
    /// next.
    pub last_event_id: Option<i64>,
}

/// One event of the stream, as its fields arrive (`id:`, `event:`, `data:`).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StreamEvent {
    /// The history sequence number it resumes from (`Last-Event-ID`); on
    /// the last event of a sequence number only.
    id: Option<String>,
    /// The event type, e.g. `operation.failed`.
    event: Option<String>,
    /// The payload: JSON, as a webhook's body (docs/WEBHOOKS.md).
    data: String,
}

/// The event history as Server-Sent Events: `id:` is the event's `seq`,
/// `event:` its type, `data:` the same JSON a webhook receives.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "push",
    params(StreamQuery,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "The stream (`text/event-stream`); a comment every 15 s keeps it alive", content_type = "text/event-stream", body = StreamEvent),
        (status = 422, description = "An unknown event type", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many streams open, or the database is unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let types = match query.event_type.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => {
            let mut types = Vec::new();
            for t in list.split(',').map(str::trim) {
                if !EVENT_TYPES.contains(&t) {
                    return Err(ApiError::invalid_field(
                        "/type",
                        format!(
                            "unknown event type `{t}`; known: {}",
                            EVENT_TYPES.join(", ")
                        ),
                    ));
                }
                types.push(t.to_owned());
            }
            types
        }
    };
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be an event id".into()))
        })
        .transpose()?;
    let Ok(permit) = streams().clone().try_acquire_owned() else {
        return Ok(super::error::problem(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Some(format!("{MAX_STREAMS} streams are open; try again later")),
            Vec::new(),
        ));
    };
    // Subscribe before the first read, so an ending in between still wakes it.
    let finished = state.events.subscribe_finished();
    let after = match header.or(query.last_event_id) {
        Some(id) => id.max(0),
        None => {
            let mut conn = state.conns.acquire().await?;
            db::events::last_seq(&mut conn).await?
        }
    };
    let reader = Reader {
        state,
        scope: caller.scope().map(str::to_owned),
        resource_id: query.resource_id,
        kind: query.kind,
        types,
        after,
        finished,
        pending: VecDeque::new(),
        _permit: permit,
    };
    let stream = futures::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok::<Event, Infallible>(event), reader))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// One stream's place and filters.
struct Reader {
    state: AppState,
    scope: Option<String>,
    resource_id: Option<Uuid>,
    kind: Option<String>,
    types: Vec<String>,
    /// Everything up to this `seq` has been sent (or filtered out).
    after: i64,
    finished: tokio::sync::broadcast::Receiver<Uuid>,
    pending: VecDeque<Event>,
    _permit: OwnedSemaphorePermit,
}

impl Reader {
    /// The next event to send; `None` ends the stream (the process stops,
    /// or the database failed: the client resumes from its last id).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.state.events.is_stopping() {
                return None;
            }
            match self.read().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "event stream ended: reading failed");
                    // As after a request that failed (its connection may be broken).
                    self.state.conns.give_all_back();
                    return None;
                }
            }
            let wait = tokio::time::sleep(POLL);
            tokio::select! {
                _ = self.finished.recv() => {}
                () = wait => {}
                () = self.state.events.stopping() => return None,
            }
        }
    }

    /// Reads the next unbroken run of events; whether it moved on.
    async fn read(&mut self) -> sqlx::Result<bool> {
        let mut conn = self.state.conns.acquire().await?;
        let upto = db::events::settled_upto(&mut conn, self.after, BATCH, HOLE_WAIT).await?;
        if upto <= self.after {
            return Ok(false);
        }
        let filter = db::events::ListFilter {
            tenant: self.scope.as_deref(),
            resource_id: self.resource_id,
            kind: self.kind.as_deref(),
            after: Some(self.after),
            before: Some(upto + 1),
            ..db::events::ListFilter::default()
        };
        let events = db::events::list(&mut conn, &filter, false, BATCH).await?;
        let ended: Vec<Uuid> = events
            .iter()
            .filter(|e| e.ended_operation.is_some())
            .filter_map(|e| e.event.operation_id)
            .collect();
        let mut operations = HashMap::new();
        for id in ended {
            if let Some(o) = db::operations::get(&mut conn, id).await? {
                operations.insert(id, o);
            }
        }
        drop(conn);
        for e in &events {
            let mut out: Vec<(String, Value)> = Vec::new();
            let resource_type = if e.event.to_state.is_none() {
                "resource.deleted"
            } else {
                "resource.state_changed"
            };
            out.push((resource_type.to_owned(), resource_data(e)));
            if let (Some(state), Some(o)) = (
                &e.ended_operation,
                e.event.operation_id.and_then(|id| operations.get(&id)),
            ) {
                out.push((format!("operation.{state}"), operation_data(o)));
            }
            out.retain(|(t, _)| self.types.is_empty() || self.types.contains(t));
            let last = out.len().saturating_sub(1);
            for (i, (t, data)) in out.into_iter().enumerate() {
                let body = json!({
                    "type": t, "version": PAYLOAD_VERSION,
                    "timestamp": e.event.created_at, "data": data,
                });
                let mut event = Event::default().event(t).data(body.to_string());
                // The id only on the last event of a `seq`: a client cut off
                // between two resumes at the previous id and gets both again.
                if i == last {
                    event = event.id(e.event.seq.to_string());
                }
                self.pending.push_back(event);
            }
        }
        // Filtered-out rows move the place on too; when the batch was full,
        // only as far as what was read.
        self.after = if events.len() as i64 == BATCH {
            events.last().map_or(upto, |e| e.event.seq)
        } else {
            upto
        };
        Ok(true)
    }
}

/// The `data` of a resource event: the fleet history's item.
pub fn resource_data(e: &FleetEvent) -> Value {
    serde_json::to_value(FleetEventResponse::from(e)).unwrap_or(Value::Null)
}

/// The `data` of an operation event, as webhooks carry it.
pub fn operation_data(o: &db::operations::Operation) -> Value {
    json!({
        "id": o.id, "resource_id": o.resource_id, "resource_kind": o.resource_kind,
        "kind": o.kind, "action": o.action, "state": o.state, "error": o.error,
        "created_at": o.created_at, "started_at": o.started_at, "finished_at": o.finished_at,
    })
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream_events))
}
