//! `/api/v1/webhooks`: subscriptions to signed event deliveries (the
//! Standard Webhooks convention), and each delivery attempt.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::extract::{Json, PathId, Query};
use super::paging::{PageQuery, page_limit};
use crate::app::AppState;
use crate::db;
use crate::db::webhooks::{AttemptRow, Webhook};
use crate::domain::Caller;
use crate::push::{EVENT_TYPES, address::check_url, message_id};

/// Longest URL accepted.
const MAX_URL: usize = 2048;
/// Longest description accepted.
const MAX_DESCRIPTION: usize = 1000;

/// A webhook subscription (never with its secret, which is shown once).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01", "url": "https://hooks.example.com/executord",
    "events": ["operation.failed", "resource.deleted"], "description": "billing", "enabled": true,
    "disabled_reason": null, "created_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:00Z"
}))]
pub struct WebhookResponse {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// The event types it gets.
    pub events: Vec<String>,
    /// For people.
    pub description: String,
    /// Whether it gets deliveries.
    pub enabled: bool,
    /// Why the service disabled it (a receiver's 410), if it did.
    pub disabled_reason: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Webhook> for WebhookResponse {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id,
            url: w.url,
            events: w.events,
            description: w.description,
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A new subscription, with its signing secret: the only time it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    /// The subscription.
    #[serde(flatten)]
    pub webhook: WebhookResponse,
    /// The signing secret, `whsec_` and base64 of 24 random bytes. Keep it:
    /// it is not shown again.
    pub secret: String,
}

/// A subscription to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://hooks.example.com/executord", "events": ["operation.failed"], "description": "billing"}))]
pub struct CreateWebhookRequest {
    /// An http or https URL; not on a loopback, link-local or private
    /// address unless the service allows it.
    pub url: String,
    /// Event types: `operation.succeeded`, `operation.failed`,
    /// `operation.cancelled`, `resource.state_changed`, `resource.deleted`.
    pub events: Vec<String>,
    /// For people.
    pub description: Option<String>,
}

/// A change to a subscription; what is left out stays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true}))]
pub struct PatchWebhookRequest {
    /// A new URL.
    pub url: Option<String>,
    /// New event types.
    pub events: Option<Vec<String>>,
    /// Enable or disable it (enabling clears why it was disabled).
    pub enabled: Option<bool>,
    /// A new description.
    pub description: Option<String>,
}

/// A page of subscriptions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// The subscriptions.
    pub items: Vec<WebhookResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "0193a5c2-7f40-7d2b-8c3e-5a6b7c8d9e0f", "message_id": "0193a5c2-7f3e-7c1a-9a4e-3f1d2b8c9e01",
    "webhook_id": "msg_0193a5c27f3e7c1a9a4e3f1d2b8c9e01", "type": "operation.failed", "outcome": "failed",
    "status_code": 503, "duration_ms": 12, "error": "the receiver answered 503 Service Unavailable",
    "created_at": "2026-11-27T10:00:02Z"
}))]
pub struct DeliveryResponse {
    /// The attempt's id.
    pub id: Uuid,
    /// The message it sent (the same on every attempt).
    pub message_id: Uuid,
    /// The `webhook-id` header it sent.
    pub webhook_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `delivered` (2xx), `failed` (another answer, or none), `refused`
    /// (the URL's address is not allowed) or `gone` (410: the subscription
    /// was disabled).
    pub outcome: String,
    /// The receiver's status code, if it answered.
    pub status_code: Option<i32>,
    /// How long the attempt took, in milliseconds.
    pub duration_ms: i64,
    /// What went wrong.
    pub error: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<AttemptRow> for DeliveryResponse {
    fn from(a: AttemptRow) -> Self {
        Self {
            id: a.id,
            message_id: a.message_id,
            webhook_id: message_id(a.message_id),
            event_type: a.event_type,
            outcome: a.outcome,
            status_code: a.status_code,
            duration_ms: a.duration_ms,
            error: a.error,
            created_at: a.created_at,
        }
    }
}

/// A page of delivery attempts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// The attempts.
    pub items: Vec<DeliveryResponse>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// What a redelivery queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivery {
    /// The message sent again (the same `webhook-id` as before).
    pub message_id: Uuid,
    /// Its `webhook-id` header.
    pub webhook_id: String,
}

fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::invalid_field(
            "/events",
            "name at least one event type",
        ));
    }
    let mut chosen = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if !EVENT_TYPES.contains(&event.as_str()) {
            return Err(ApiError::invalid_field(
                &format!("/events/{i}"),
                format!("unknown event type; known: {}", EVENT_TYPES.join(", ")),
            ));
        }
        if !chosen.contains(event) {
            chosen.push(event.clone());
        }
    }
    Ok(chosen)
}

async fn check(state: &AppState, url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL {
        return Err(ApiError::invalid_field(
            "/url",
            format!("longer than {MAX_URL} bytes"),
        ));
    }
    check_url(url, state.push.allow_private)
        .await
        .map(drop)
        .map_err(|e| ApiError::invalid_field("/url", e.to_string()))
}

fn check_description(description: Option<&str>) -> Result<(), ApiError> {
    match description {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(ApiError::invalid_field(
            "/description",
            format!("longer than {MAX_DESCRIPTION} characters"),
        )),
        Some(d) if d.contains('\0') => Err(ApiError::invalid_field(
            "/description",
            "must not contain NUL",
        )),
        _ => Ok(()),
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no webhook with id {id}"))
}

/// Subscribe to events; the answer holds the signing secret, shown once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "push",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Subscribed; `secret` is shown only now", body = CreatedWebhook,
            headers(("Location" = String, description = "The subscription's URL"))),
        (status = 409, description = "The tenant has 100 subscriptions already", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad URL, a refused address, or unknown event types", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Json(request): Json<CreateWebhookRequest>,
) -> Result<Response, ApiError> {
    check(&state, &request.url).await?;
    let events = check_events(&request.events)?;
    check_description(request.description.as_deref())?;
    let secret = crate::push::new_secret();
    let mut conn = state.conns.acquire().await?;
    let webhook = db::webhooks::insert(
        &mut conn,
        &db::webhooks::NewWebhook {
            id: Uuid::now_v7(),
            tenant: &caller.tenant,
            url: &request.url,
            secret: &secret,
            events: &events,
            description: request.description.as_deref().unwrap_or_default(),
        },
        crate::push::MAX_SUBSCRIPTIONS,
    )
    .await?
    .ok_or_else(|| {
        ApiError::Conflict(format!(
            "tenant {} has {} webhook subscriptions, the most allowed; delete one first",
            caller.tenant,
            crate::push::MAX_SUBSCRIPTIONS
        ))
    })?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/webhooks/{}", webhook.id)) {
        headers.insert(header::LOCATION, location);
    }
    let body = CreatedWebhook {
        webhook: webhook.into(),
        secret,
    };
    Ok((StatusCode::CREATED, headers, axum::Json(body)).into_response())
}

/// List subscriptions, newest first.
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "push",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of subscriptions", body = WebhookList),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_webhooks(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<WebhookList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let mut conn = state.conns.acquire().await?;
    let webhooks = db::webhooks::list(&mut conn, caller.scope(), query.cursor, limit).await?;
    let next_cursor = (webhooks.len() as i64 == limit)
        .then(|| webhooks.last().map(|w| w.id))
        .flatten();
    let items = webhooks.into_iter().map(WebhookResponse::from).collect();
    Ok(axum::Json(WebhookList { items, next_cursor }))
}

/// Get a subscription.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "push",
    params(("id" = Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 200, description = "The subscription", body = WebhookResponse),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_webhook(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<axum::Json<WebhookResponse>, ApiError> {
    let mut conn = state.conns.acquire().await?;
    let webhook = db::webhooks::get_in(&mut conn, id, caller.scope())
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(axum::Json(webhook.into()))
}

/// Change a subscription's URL, events, description, or enable or disable it.
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "push",
    params(("id" = Uuid, Path, description = "The subscription's id")),
    request_body = PatchWebhookRequest,
    responses(
        (status = 200, description = "The subscription as changed", body = WebhookResponse),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad URL, a refused address, or unknown event types", body = Problem, content_type = "application/problem+json"),
    ))]
async fn patch_webhook(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Json(request): Json<PatchWebhookRequest>,
) -> Result<axum::Json<WebhookResponse>, ApiError> {
    if let Some(url) = &request.url {
        check(&state, url).await?;
    }
    let events = request.events.as_deref().map(check_events).transpose()?;
    check_description(request.description.as_deref())?;
    let mut conn = state.conns.acquire().await?;
    let patch = db::webhooks::Patch {
        url: request.url.as_deref(),
        events: events.as_deref(),
        enabled: request.enabled,
        description: request.description.as_deref(),
    };
    let webhook = db::webhooks::update_in(&mut conn, id, caller.scope(), &patch)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(axum::Json(webhook.into()))
}

/// Delete a subscription, with its pending messages and its attempts.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "push",
    params(("id" = Uuid, Path, description = "The subscription's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.conns.acquire().await?;
    if db::webhooks::delete_in(&mut conn, id, caller.scope()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}

/// A subscription's delivery attempts, newest first.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "push",
    params(("id" = Uuid, Path, description = "The subscription's id"), PageQuery),
    responses(
        (status = 200, description = "A page of attempts", body = DeliveryList),
        (status = 404, description = "No such subscription", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<DeliveryList>, ApiError> {
    let limit = page_limit(query.limit)?;
    let mut conn = state.conns.acquire().await?;
    db::webhooks::get_in(&mut conn, id, caller.scope())
        .await?
        .ok_or_else(|| not_found(id))?;
    let attempts = db::webhooks::attempts(&mut conn, id, query.cursor, limit).await?;
    let next_cursor = (attempts.len() as i64 == limit)
        .then(|| attempts.last().map(|a| a.id))
        .flatten();
    let items = attempts.into_iter().map(DeliveryResponse::from).collect();
    Ok(axum::Json(DeliveryList { items, next_cursor }))
}

/// Send a message again, now: by an attempt's id or its message's id. It
/// keeps its `webhook-id`, and is retried for the retry window from now.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "push",
    params(
        ("id" = Uuid, Path, description = "The subscription's id"),
        ("delivery_id" = Uuid, Path, description = "An attempt's id, or its message's id"),
    ),
    responses(
        (status = 202, description = "Queued to be sent again", body = Redelivery),
        (status = 404, description = "No such subscription or delivery", body = Problem, content_type = "application/problem+json"),
    ))]
async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(Uuid, Uuid)>, PathRejection>,
) -> Result<(StatusCode, axum::Json<Redelivery>), ApiError> {
    let Path((id, delivery_id)) =
        path.map_err(|e| ApiError::BadRequest(format!("bad id in the path: {}", e.body_text())))?;
    let mut conn = state.conns.acquire().await?;
    db::webhooks::get_in(&mut conn, id, caller.scope())
        .await?
        .ok_or_else(|| not_found(id))?;
    let message = db::webhooks::redeliver(&mut conn, id, delivery_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery with id {delivery_id}")))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Redelivery {
            message_id: message,
            webhook_id: message_id(message),
        }),
    ))
}

/// The routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}
