//! The HTTP/JSON API over the store and the agent's status: on a unix socket (mode 0660) and,
//! optionally, on TCP where every request must carry the bearer token. The CLI is its client.

pub mod answers;
pub mod client;
pub mod live;
mod shared;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{RawQuery, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{error, info};

use self::{
    answers::{AlertsAnswer, FlowsAnswer, UndeliveredAnswer},
    shared::SharedAnswers,
};
use crate::{
    metrics::Metrics,
    status::Status,
    store::{
        StoreReader,
        query::{AlertQuery, FlowQuery, ParamError, rfc3339},
    },
};

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: StoreReader,
    pub status: Arc<Mutex<Status>>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// The state directory, whose outbox holds the alerts sinks gave up on.
    pub state_dir: PathBuf,
    /// The configured classes: a `class` filter naming another one is refused. A reload may
    /// add classes.
    pub classes: Arc<std::sync::RwLock<Vec<String>>>,
    /// Store queries running at once. Queries wait for a permit rather than take every core:
    /// the store's writer (the evidence) must keep up while people query.
    pub queries: Arc<tokio::sync::Semaphore>,
    /// Flow answers (their rows, as JSON) shared by identical questions between two store
    /// commits.
    pub flow_answers: Arc<SharedAnswers>,
    /// The agent's loop, asked for a read of the kernel before a flow question is answered
    /// (None: answers hold what the store holds).
    pub live: Option<live::LiveTotals>,
}

/// Store queries the API runs at once: every core but one, at least one.
pub fn query_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).max(1)
}

/// The running servers; dropping the stop sender ends them.
pub struct ApiServer {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    socket: PathBuf,
}

impl ApiServer {
    /// Stops serving and removes the socket, so that nothing answers at that path (and the
    /// CLI says no agent runs there).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        use std::os::unix::fs::FileTypeExt;
        if std::fs::symlink_metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Where the API listens.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Unix socket of the HTTP API (mode 0660).
    pub socket: PathBuf,
    /// Also serve the API on TCP here; requires `token_file`.
    pub listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token TCP clients must send.
    pub token_file: Option<PathBuf>,
}

/// Reads the TCP token (when TCP is configured); the error names the file.
pub fn read_token(config: &ApiOptions) -> anyhow::Result<Option<String>> {
    let Some(path) = &config.token_file else { return Ok(None) };
    let token = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("api.token_file: {}: cannot read it: {e}", path.display()))?;
    let token = token.trim().to_owned();
    if token.len() < 16 {
        anyhow::bail!("api.token_file: {}: the token is shorter than 16 characters", path.display());
    }
    Ok(Some(token))
}

fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/flows", get(flows))
        .route("/v1/alerts", get(alerts))
        .route("/v1/status", get(status))
        .route("/v1/undelivered", get(undelivered))
        .route("/metrics", get(metrics))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})) })
        .with_state(state)
}

/// Starts the unix-socket server and, when configured, the TCP one.
pub async fn serve(config: &ApiOptions, token: Option<String>, state: ApiState) -> anyhow::Result<ApiServer> {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let socket = &config.socket;
    let listener = bind_socket(socket)?;
    info!(socket = %socket.display(), "API listening");
    let app = router(state.clone());
    let mut rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.changed().await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            error!(error = %e, "the API (unix socket) stopped");
        }
    }));
    if let (Some(addr), Some(token)) = (&config.listen, token) {
        let addr = *addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("api.listen: binding {addr}"))?;
        info!(%addr, "API listening on TCP (bearer token required)");
        let token = Arc::new(token);
        let app = router(state).layer(middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move { require_token(&token, req, next).await }
        }));
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.changed().await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                error!(error = %e, "the API (TCP) stopped");
            }
        }));
    }
    Ok(ApiServer { stop, tasks, socket: socket.clone() })
}

/// Binds the unix socket (replacing a stale one) with mode 0660.
fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("api.socket: creating {}", dir.display()))?;
        // The agent runs with umask 077: let the socket's group reach it (the socket is 0660).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("api.socket: setting the mode of {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "api.socket: {} exists and is not a socket: not removing it; choose another path or remove it yourself",
                path.display()
            );
        }
        // Refuse to take over the socket of a running agent.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("api.socket: {} is in use by another process (another agent?)", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("api.socket: removing the stale {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("api.socket: binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("api.socket: setting the mode of {}", path.display()))?;
    Ok(listener)
}

async fn require_token(token: &str, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
        let mut r = error_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "expected": "an Authorization: Bearer <token> header with the token of api.token_file"}),
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error_response(code: StatusCode, body: serde_json::Value) -> Response {
    (code, Json(body)).into_response()
}

fn params(raw: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Refuses a `class` filter that names no configured class (it would match nothing).
fn check_classes(params: &[(String, String)], classes: &[String]) -> Result<(), ParamError> {
    for (k, v) in params.iter().filter(|(k, _)| k == "class") {
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !classes.iter().any(|c| c == name) {
                let expected = if classes.is_empty() {
                    "a configured class (this agent has none)".to_owned()
                } else {
                    format!("one of the configured classes: {}", classes.join(", "))
                };
                return Err(ParamError { parameter: k.clone(), value: name.to_owned(), expected });
            }
        }
    }
    Ok(())
}

fn bad_request(e: ParamError) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid parameter", "parameter": e.parameter, "value": e.value, "expected": e.expected}),
    )
}

fn internal(e: impl std::fmt::Display) -> Response {
    error!(error = %e, "API request failed");
    error_response(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": e.to_string()}))
}

async fn flows(State(s): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let params = params(raw);
    if let Err(e) = check_classes(&params, &s.classes.read().unwrap_or_else(|e| e.into_inner())) {
        return bad_request(e);
    }
    let q = match FlowQuery::parse(&params, chrono::Utc::now()) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    // Active flows' running totals first: the store then holds what the kernel counted.
    let read = match &s.live {
        Some(live) => live.read().await,
        None => None,
    };
    let (store, q2, queries) = (s.store.clone(), q.clone(), s.queries.clone());
    let version = store.version();
    let as_of = read.unwrap_or_else(chrono::Utc::now);
    let answer = s
        .flow_answers
        .get(q.identity(store.bucket), version, || async move {
            let Ok(permit) = queries.acquire_owned().await else {
                return Err("the API is stopping".to_owned());
            };
            let rows = move || -> Result<String, String> {
                // Held while the query runs, even if the request that started it is gone.
                let _permit = permit;
                let rows =
                    store.connect().and_then(|c| q2.run(&c, store.bucket)).map_err(|e| e.to_string())?;
                serde_json::to_string(&rows).map_err(|e| e.to_string())
            };
            tokio::task::spawn_blocking(rows).await.map_err(|e| e.to_string())?
        })
        .await;
    match answer {
        Ok(rows) => flows_answer(&q, s.store.bucket, as_of, read.is_some(), &rows),
        Err(e) => internal(e),
    }
}

/// A [`FlowsAnswer`] to `q` whose rows are already JSON, shared between answers.
fn flows_answer(
    q: &FlowQuery,
    bucket: std::time::Duration,
    as_of: chrono::DateTime<chrono::Utc>,
    live: bool,
    rows: &str,
) -> Response {
    // Milliseconds: single flows are chosen by their times to the millisecond.
    let ms = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let head = FlowsAnswer::<()> {
        since: ms(q.since),
        until: ms(q.until),
        counted_from: rfc3339(q.counted_from(bucket)),
        group_by: q.group_by.iter().map(|g| g.name().to_owned()).collect(),
        as_of: as_of.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        live,
        rows: Vec::new(),
    };
    let head = serde_json::to_string(&head).unwrap_or_default();
    let Some(head) = head.strip_suffix("[]}") else {
        return internal("cannot encode the answer");
    };
    let body = format!("{head}{rows}}}");
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn alerts(State(s): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let params = params(raw);
    if let Err(e) = check_classes(&params, &s.classes.read().unwrap_or_else(|e| e.into_inner())) {
        return bad_request(e);
    }
    let q = match AlertQuery::parse(&params, chrono::Utc::now()) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let store = s.store.clone();
    let q2 = q.clone();
    let Ok(permit) = s.queries.clone().acquire_owned().await else { return internal("the API is stopping") };
    let alerts = move || {
        let _permit = permit;
        store.connect().and_then(|c| q2.run(&c))
    };
    match tokio::task::spawn_blocking(alerts).await {
        Ok(Ok(alerts)) => {
            Json(AlertsAnswer { since: rfc3339(q.since), until: rfc3339(q.until), alerts }).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Alerts a sink gave up on, newest first.
async fn undelivered(State(s): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let params = params(raw);
    let limit = match params.iter().rev().find(|(k, _)| k == "limit").map(|(_, v)| v.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => {
            return bad_request(ParamError {
                parameter: "limit".into(),
                value: params
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "limit")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
                expected: "a number from 1 to 10000".into(),
            });
        }
    };
    let dir = s.state_dir.clone();
    match tokio::task::spawn_blocking(move || crate::sinks::Outbox::dead_letters_in(&dir, limit)).await {
        Ok(Ok(undelivered)) => Json(UndeliveredAnswer { undelivered }).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn status(State(s): State<ApiState>) -> Response {
    let mut st = s.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
    st.uptime_seconds = s.started.elapsed().as_secs();
    st.databases.store_bytes = s.store.size();
    // What each class sent in the last hour, as the store has it.
    let store = s.store.clone();
    let Ok(permit) = s.queries.clone().acquire_owned().await else { return internal("the API is stopping") };
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let sums = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        store.connect().and_then(|c| crate::store::bytes_by_class_and_verdict(&c, since, store.bucket))
    })
    .await;
    match sums {
        Ok(Ok(sums)) => {
            for (class, verdict, bytes) in sums {
                let Some(c) = st.classes.iter_mut().find(|c| Some(&c.name) == class.as_ref()) else {
                    continue;
                };
                match verdict.as_str() {
                    "allowed" => c.last_hour.allowed += bytes,
                    "violation" => c.last_hour.violation += bytes,
                    _ => {}
                }
            }
        }
        Ok(Err(e)) => error!(error = %e, "reading the classes' last hour from the store"),
        Err(e) => error!(error = %e, "reading the classes' last hour from the store"),
    }
    Json(st).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_file_at_the_socket_path_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.sock");
        std::fs::write(&p, b"precious").unwrap();
        let e = super::bind_socket(&p).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
        // A stale socket (no agent behind it) is replaced.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(super::bind_socket(&stale).is_ok());
    }
}
