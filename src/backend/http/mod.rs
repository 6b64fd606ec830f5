//! The `http` driver: a declared backend reached over HTTP (the wire
//! contract is in `docs/BACKENDS.md`).
//!
//! A method speaks the generic contract (`POST {base_url}/{method}` with the
//! call as JSON, the reply as JSON), or, with a `request` template, calls an
//! existing REST API directly. One pooled client per backend keeps its
//! connections alive; `max_concurrency` bounds the calls in flight. Header
//! values (which may hold secrets) are never logged, nor is the base URL.

pub(crate) mod reply;
mod route;
mod template;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use super::declared::{HttpDecl, NotFound, StatusClass, expand, method_infos};
use super::wire::{self, WireListReply, WireListRequest, WireRequest};
use super::{
    Backend, BackendCall, BackendError, BackendReply, CallDetails, ListedObject, MethodInfo,
    details_body,
};
use reply::{Body, ERROR_BODY_LIMIT, REPLY_LIMIT};
use route::{Calling, Route, Templated, default_class};

/// How long connecting may take; the call as a whole is bounded by its step's timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A backend reached over HTTP.
pub struct HttpBackend {
    name: String,
    methods: Vec<MethodInfo>,
    runtime_states: Vec<String>,
    /// Without a trailing `/`; may hold a secret, so never shown.
    base_url: String,
    /// Declared headers, expanded and marked sensitive.
    headers: HeaderMap,
    timeout: Option<Duration>,
    slots: Option<Semaphore>,
    client: reqwest::Client,
    routes: HashMap<String, Route>,
}

impl fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpBackend")
            .field("name", &self.name)
            .field("methods", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl HttpBackend {
    /// The backend `name` declares; the error says what is wrong with the
    /// declaration (never a secret's value).
    pub fn new(name: &str, decl: HttpDecl) -> Result<Self, String> {
        let base_url = expand(&decl.base_url).map_err(|e| format!("base_url: {e}"))?;
        let parsed = reqwest::Url::parse(base_url.expose())
            .map_err(|e| format!("base_url is not a valid URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("base_url must be an http:// or https:// URL".to_owned());
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err("base_url may not have a query or a fragment".to_owned());
        }
        let base_url = base_url.expose().trim_end_matches('/').to_owned();
        let mut headers = HeaderMap::new();
        for (header, value) in &decl.headers {
            let place = format!("headers.{header}");
            let header_name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("{place}: not a valid header name"))?;
            if header_name == CONTENT_TYPE || header_name.as_str() == "idempotency-key" {
                return Err(format!("{place}: executord sets this header itself"));
            }
            let value = expand(value).map_err(|e| format!("{place}: {e}"))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| format!("{place}: the value is not a valid header value"))?;
            value.set_sensitive(true);
            headers.append(header_name, value);
        }
        if decl.timeout_s == Some(0) {
            return Err("timeout_s must be at least 1".to_owned());
        }
        if decl.max_concurrency == Some(0) {
            return Err("max_concurrency must be at least 1".to_owned());
        }
        if decl.methods.is_empty() {
            return Err("declares no method".to_owned());
        }
        let mut routes = HashMap::new();
        for (method, m) in &decl.methods {
            let route = Route::new(method, m).map_err(|e| format!("methods.{method}: {e}"))?;
            routes.insert(method.clone(), route);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("executord/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect would send the call (and its headers) elsewhere: never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot make its HTTP client: {e}"))?;
        Ok(Self {
            name: name.to_owned(),
            methods: method_infos(&decl.methods),
            runtime_states: decl.runtime_states,
            base_url,
            headers,
            timeout: decl.timeout_s.map(Duration::from_secs),
            slots: decl.max_concurrency.map(Semaphore::new),
            client,
            routes,
        })
    }

    /// The HTTP request for `method`.
    fn request(
        &self,
        method: &str,
        route: &Route,
        call: BackendCall,
    ) -> Result<(reqwest::RequestBuilder, Option<BackendCall>), String> {
        let key = call.idempotency_key.to_string();
        let (builder, kept) = match &route.calling {
            Calling::Generic { path } => {
                let body = serde_json::to_vec(&WireRequest::new(method, call))
                    .map_err(|e| format!("cannot encode the call: {e}"))?;
                let url = format!("{}{path}", self.base_url);
                let builder = self
                    .client
                    .post(url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body);
                (builder, None)
            }
            Calling::Templated(templated) => {
                let Templated {
                    method: http_method,
                    path,
                    query,
                    body,
                    ..
                } = templated.as_ref();
                let mut url = self.base_url.to_owned();
                url.push_str(
                    &path
                        .render_url(&call, false)
                        .map_err(|e| format!("path: {e}"))?,
                );
                for (i, (name, value)) in query.iter().enumerate() {
                    let value = value
                        .render_url(&call, true)
                        .map_err(|e| format!("query.{name}: {e}"))?;
                    url.push(if i == 0 { '?' } else { '&' });
                    url.extend(percent_encoding::utf8_percent_encode(
                        name,
                        percent_encoding::NON_ALPHANUMERIC,
                    ));
                    url.push('=');
                    url.push_str(&value);
                }
                let mut builder = self.client.request(http_method.clone(), url);
                if let Some(body) = body {
                    let body = serde_json::to_vec(&body.render(&call))
                        .map_err(|e| format!("cannot encode the body: {e}"))?;
                    builder = builder.header(CONTENT_TYPE, "application/json").body(body);
                }
                (builder, Some(call))
            }
        };
        // Declared headers replace the driver's own (an `Accept` of the API's).
        let builder = builder
            .header("idempotency-key", key)
            .header(ACCEPT, "application/json, application/problem+json")
            .headers(self.headers.clone());
        Ok((builder, kept))
    }

    /// Sends the call and reads the answer as its method's `statuses` say.
    async fn exchange(
        &self,
        method: &str,
        route: &Route,
        call: BackendCall,
        meter: &mut Meter<'_>,
    ) -> Result<BackendReply, Failure> {
        let (request, kept) = self
            .request(method, route, call)
            .map_err(|e| Failure::Permanent(format!("cannot call `{method}`: {e}")))?;
        let response = request.send().await.map_err(|e| {
            if e.is_builder() {
                return Failure::Permanent(format!("cannot call `{method}`: {}", chain(&e)));
            }
            let message = format!(
                "cannot reach backend `{}` for `{method}`: {}",
                self.name,
                chain(&e)
            );
            Failure::Transient(message, None)
        })?;
        let status = response.status();
        meter.status = Some(status.as_u16());
        let class = route
            .statuses
            .get(&status.as_u16())
            .copied()
            .unwrap_or_else(|| default_class(status));
        match class {
            StatusClass::Success | StatusClass::Done | StatusClass::NotDone => {
                let mut reply = self
                    .read_reply(method, route, kept.as_ref(), status, response)
                    .await?;
                if class != StatusClass::Success {
                    reply.done = Some(class == StatusClass::Done);
                }
                Ok(reply)
            }
            StatusClass::NotFound if route.not_found == NotFound::Success => {
                Ok(BackendReply::default())
            }
            StatusClass::NotFound => {
                let body = reply::read_prefix(response, ERROR_BODY_LIMIT).await;
                meter.body = Some(body.clone());
                Err(Failure::NotFound(
                    reply::message(&body).unwrap_or_else(|| answered(method, status)),
                ))
            }
            StatusClass::Transient => {
                let wait = reply::retry_after(response.headers(), SystemTime::now());
                let body = reply::read_prefix(response, ERROR_BODY_LIMIT).await;
                meter.body = Some(body.clone());
                let message = match reply::message(&body) {
                    Some(detail) => format!("{}: {detail}", answered(method, status)),
                    None => answered(method, status),
                };
                Err(Failure::Transient(message, wait))
            }
            StatusClass::Permanent => {
                let body = reply::read_prefix(response, ERROR_BODY_LIMIT).await;
                meter.body = Some(body.clone());
                Err(Failure::Permanent(
                    reply::message(&body).unwrap_or_else(|| answered(method, status)),
                ))
            }
        }
    }

    /// The reply of an answer its method counts as a success.
    async fn read_reply(
        &self,
        method: &str,
        route: &Route,
        call: Option<&BackendCall>,
        status: StatusCode,
        response: reqwest::Response,
    ) -> Result<BackendReply, Failure> {
        let bad = |what: String| Failure::BadReply(format!("bad reply from `{method}`: {what}"));
        // Only a 2xx answer's body is a reply; another status counted as a
        // success (say, `404 = "success"`) has an error document instead.
        let reads = status.is_success()
            && match &route.calling {
                Calling::Generic { .. } => true,
                Calling::Templated(t) => t.reply.reads_body(),
            };
        let body = if reads {
            match reply::read_capped(response, REPLY_LIMIT).await {
                Ok(Body::Whole(body)) => body,
                Ok(Body::TooLarge) => return Err(bad("larger than 1 MiB".to_owned())),
                Err(e) => {
                    return Err(Failure::Transient(
                        format!("the answer of `{method}` broke off: {}", chain(&e)),
                        None,
                    ));
                }
            }
        } else {
            // Read anyway (a little), so the connection can be used again.
            reply::read_prefix(response, ERROR_BODY_LIMIT).await;
            Vec::new()
        };
        let reply = match (&route.calling, call) {
            (Calling::Templated(t), Some(call)) => {
                let json = reply::json(&body).map_err(bad)?;
                t.reply.apply(call, &json).map_err(bad)?
            }
            _ => reply::generic(&body).map_err(bad)?,
        };
        if let Some(state) = wire::undeclared_runtime_state(&reply, &self.runtime_states) {
            return Err(bad(format!(
                "runtime state `{state}` is not one backend `{}` declares ({})",
                self.name,
                self.runtime_states.join(", ")
            )));
        }
        Ok(reply)
    }
}

fn answered(method: &str, status: StatusCode) -> String {
    format!("`{method}` answered {status}")
}

/// An error and its causes, without the URL (which may hold a secret).
fn chain(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else if error.is_builder() {
        "the URL or a header is not valid".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How a call failed, as the metrics count it.
enum Failure {
    Transient(String, Option<Duration>),
    Permanent(String),
    NotFound(String),
    BadReply(String),
}

impl Failure {
    fn class(&self) -> &'static str {
        match self {
            Self::Transient(..) => "transient",
            Self::Permanent(_) => "permanent",
            Self::NotFound(_) => "not_found",
            Self::BadReply(_) => "bad_reply",
        }
    }
}

impl From<Failure> for BackendError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Transient(message, Some(retry_after)) => Self::TransientAfter {
                message,
                retry_after,
            },
            Failure::Transient(message, None) => Self::Transient(message),
            Failure::Permanent(message) | Failure::BadReply(message) => Self::Permanent(message),
            Failure::NotFound(message) => Self::NotFound(message),
        }
    }
}

/// Counts and logs one call when it ends, also when the caller drops it
/// (its time is up, its operation was cancelled): then its outcome is
/// `abandoned`.
struct Meter<'a> {
    backend: &'a str,
    method: &'a str,
    started: Instant,
    status: Option<u16>,
    /// The start of an error answer's body, for the error's details.
    body: Option<Vec<u8>>,
    outcome: &'static str,
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        crate::metrics::backend_call(self.backend, self.method, self.outcome, elapsed);
        tracing::debug!(
            backend = self.backend,
            method = self.method,
            status = self.status,
            outcome = self.outcome,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "backend call"
        );
    }
}

#[async_trait]
impl Backend for HttpBackend {
    fn methods(&self) -> &[MethodInfo] {
        &self.methods
    }

    fn runtime_states(&self) -> Vec<&str> {
        self.runtime_states.iter().map(String::as_str).collect()
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    async fn list(&self, method: &str, kind: &str) -> Result<Vec<ListedObject>, BackendError> {
        let Some(Route {
            calling: Calling::Generic { path },
            ..
        }) = self.routes.get(method)
        else {
            return Err(BackendError::Permanent(format!(
                "backend `{}` has no generic method `{method}` to list with",
                self.name
            )));
        };
        let request = WireListRequest {
            method: method.to_owned(),
            idempotency_key: uuid::Uuid::new_v4(),
            kind: kind.to_owned(),
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| BackendError::Permanent(format!("cannot encode the call: {e}")))?;
        let response = self
            .client
            .post(format!("{}{path}", self.base_url))
            .header(CONTENT_TYPE, "application/json")
            .header("idempotency-key", request.idempotency_key.to_string())
            .header(ACCEPT, "application/json, application/problem+json")
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                BackendError::Transient(format!(
                    "cannot reach backend `{}` for `{method}`: {}",
                    self.name,
                    chain(&e)
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = reply::read_prefix(response, ERROR_BODY_LIMIT).await;
            let message = reply::message(&body).unwrap_or_else(|| answered(method, status));
            let error = match default_class(status) {
                StatusClass::NotFound => BackendError::NotFound(message),
                StatusClass::Transient => BackendError::Transient(message),
                _ => BackendError::Permanent(message),
            };
            return Err(error.with_details(CallDetails {
                http_status: Some(status.as_u16()),
                exit_code: None,
                body: details_body(&body),
            }));
        }
        let body = match reply::read_capped(response, REPLY_LIMIT).await {
            Ok(Body::Whole(body)) => body,
            Ok(Body::TooLarge) => {
                return Err(BackendError::Permanent(format!(
                    "bad reply from `{method}`: larger than 1 MiB"
                )));
            }
            Err(e) => return Err(BackendError::Transient(chain(&e))),
        };
        let listed: WireListReply = serde_json::from_slice(&body)
            .map_err(|e| BackendError::Permanent(format!("bad reply from `{method}`: {e}")))?;
        Ok(listed.objects)
    }

    async fn call(&self, method: &str, call: BackendCall) -> Result<BackendReply, BackendError> {
        let (method, route) = self.routes.get_key_value(method).ok_or_else(|| {
            BackendError::Permanent(format!("backend `{}` has no method `{method}`", self.name))
        })?;
        let _permit = match &self.slots {
            Some(slots) => Some(slots.acquire().await.map_err(|_| {
                BackendError::Transient(format!("backend `{}` is shutting down", self.name))
            })?),
            None => None,
        };
        let mut meter = Meter {
            backend: &self.name,
            method,
            started: Instant::now(),
            status: None,
            body: None,
            outcome: "abandoned",
        };
        let result = self.exchange(method, route, call, &mut meter).await;
        meter.outcome = match &result {
            Ok(_) => "ok",
            Err(failure) => failure.class(),
        };
        result.map_err(|failure| {
            let error = BackendError::from(failure);
            match meter.status {
                // It answered: the status and the start of the body explain it.
                Some(status) => error.with_details(CallDetails {
                    http_status: Some(status),
                    exit_code: None,
                    body: meter.body.take().as_deref().and_then(details_body),
                }),
                None => error,
            }
        })
    }
}
