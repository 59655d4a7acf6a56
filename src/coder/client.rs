//! HTTP client for the Coder REST API: session-token auth, request timeouts, typed JSON, error
//! mapping, chat-path probing across Coder versions, rate limiting and the workspace watch stream.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::accounts::Accounts;
use super::credentials::{self, SessionToken};
use super::error::CoderError;
use super::names::{self, NameError};
use super::ratelimit::RateLimiter;
use super::sse::{Frame, SseParser};
use super::tls::{self, Trust};
use super::transport::{CONNECT_TIMEOUT, Transport};
use super::types::{
    Chat, ChatResponse, CoderVersion, CreateWorkspaceBuildRequest, User, Workspace, WorkspaceBuild,
};

/// Header carrying the session token.
pub const SESSION_TOKEN_HEADER: &str = "Coder-Session-Token";

/// Observes every Coder call: endpoint route template and status label (`200`, `409`,
/// `timeout`, …). Used for metrics.
pub type CallObserver = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// On whose behalf a call goes to Coder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// The client's user: the session token goes with the call.
    User,
    /// Nobody: no token, for what coderd serves without authentication.
    Anonymous,
}

/// Which chat path this deployment serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChatPath {
    V2,
    Experimental,
}

impl ChatPath {
    fn prefix(self) -> &'static str {
        match self {
            ChatPath::V2 => "/api/v2/chats",
            ChatPath::Experimental => "/api/experimental/chats",
        }
    }
}

/// Settings shared by all clients of one operator.
#[derive(Clone)]
pub struct ClientOptions {
    /// Per-request timeout (not applied to watch streams).
    pub request_timeout: Duration,
    /// Requests per minute per endpoint (0 disables the limiter).
    pub requests_per_minute: u32,
    /// Metrics hook.
    pub observer: Option<CallObserver>,
    /// Largest response body accepted; a larger answer is refused while it is read.
    pub max_body_bytes: usize,
    /// Largest watch stream frame (and so the most a stream buffers).
    pub max_frame_bytes: usize,
    /// A watch stream that completes no frame (not even a ping) for this long is closed, and
    /// its workspace polled until a new stream delivers. Coder pings every 15 s.
    pub watch_idle: Duration,
    /// The certificates trusted for `https` (`None`: the platform's CA store, see
    /// [`Trust::platform`]).
    pub trust: Option<Trust>,
}

/// Default [`ClientOptions::max_body_bytes`]: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
/// Default [`ClientOptions::max_frame_bytes`]: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;
/// Default [`ClientOptions::watch_idle`]: Coder's 15 s heartbeat plus 10 s.
pub const DEFAULT_WATCH_IDLE: Duration = Duration::from_secs(25);

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(15),
            requests_per_minute: 400,
            observer: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            watch_idle: DEFAULT_WATCH_IDLE,
            trust: None,
        }
    }
}

/// A client for one Coder deployment and one token. Cheap to clone. Its connections belong to
/// its [`Transport`], which clients of other tokens may share.
#[derive(Clone)]
pub struct CoderClient {
    inner: Arc<Inner>,
}

/// One credential's state: its token, rate limiter and what it knows about users and the chat
/// path. The connections are the [`Transport`]'s, shared with other credentials.
struct Inner {
    transport: Arc<Transport>,
    base: String,
    /// The host of `base`, for messages.
    host: String,
    token: SessionToken,
    chat_path: Mutex<Option<ChatPath>>,
    limiter: RateLimiter,
    observer: Option<CallObserver>,
    max_body: usize,
    max_frame: usize,
    watch_idle: Duration,
    accounts: Accounts,
}

impl fmt::Debug for CoderClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoderClient")
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

impl CoderClient {
    /// Creates a client for `base_url` (e.g. `https://coder.example.com`) with a transport of
    /// its own (see [`CoderClient::with_transport`] to share one).
    pub fn new(
        base_url: &str,
        token: SessionToken,
        opts: &ClientOptions,
    ) -> Result<CoderClient, CoderError> {
        CoderClient::with_transport(
            base_url,
            token,
            opts,
            Arc::new(Transport::new(opts.request_timeout, opts.trust.as_ref())?),
        )
    }

    /// Creates a client for `base_url` and `token` that sends its requests through
    /// `transport`, which may be shared with the clients of other tokens (it holds no
    /// identity; see [`super::transport`]). The transport's trust and request timeout apply;
    /// `opts.trust` and `opts.request_timeout` are not read again.
    pub fn with_transport(
        base_url: &str,
        token: SessionToken,
        opts: &ClientOptions,
        transport: Arc<Transport>,
    ) -> Result<CoderClient, CoderError> {
        let base = credentials::base_url(base_url)
            .map_err(|e| CoderError::Config(format!("the Coder URL {e}")))?;
        let host = reqwest::Url::parse(&base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(CoderClient {
            inner: Arc::new(Inner {
                transport,
                base,
                host,
                token,
                chat_path: Mutex::new(None),
                limiter: RateLimiter::new(opts.requests_per_minute),
                observer: opts.observer.clone(),
                max_body: opts.max_body_bytes,
                max_frame: opts.max_frame_bytes,
                watch_idle: opts.watch_idle,
                accounts: Accounts::default(),
            }),
        })
    }

    /// The deployment URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// What this client remembers about users (see [`super::users`]).
    pub(crate) fn accounts(&self) -> &Accounts {
        &self.inner.accounts
    }

    /// Maps a transport failure (timeout, refused, reset) to an error and counts it.
    fn transport_error(&self, endpoint: &'static str, e: reqwest::Error) -> CoderError {
        let err = if let Some(reason) = tls::untrusted_certificate(&e) {
            CoderError::TlsUntrusted {
                endpoint,
                host: self.inner.host.clone(),
                reason,
            }
        } else if e.is_timeout() {
            let after = if e.is_connect() {
                CONNECT_TIMEOUT
            } else {
                self.inner.transport.request_timeout
            };
            CoderError::Timeout { endpoint, after }
        } else {
            CoderError::Connect {
                endpoint,
                source: e.without_url(),
            }
        };
        self.observe(endpoint, &err.status_label());
        err
    }

    fn observe(&self, endpoint: &'static str, status: &str) {
        if let Some(o) = &self.inner.observer {
            o(endpoint, status);
        }
    }

    /// A call as this client's user (its session token in the request).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &'static str,
        path: &str,
        body: Option<&dyn erased::Body>,
    ) -> Result<T, CoderError> {
        self.send(method, endpoint, path, body, Caller::User).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &'static str,
        path: &str,
        body: Option<&dyn erased::Body>,
        caller: Caller,
    ) -> Result<T, CoderError> {
        self.inner.limiter.acquire(path).await;
        let mut req = self
            .inner
            .transport
            .http
            .request(method, format!("{}{}", self.inner.base, path))
            .header(header::ACCEPT, "application/json");
        if caller == Caller::User {
            req = req.header(SESSION_TOKEN_HEADER, self.inner.token.expose());
        }
        if let Some(b) = body {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body(b.to_json());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(endpoint, e))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let (bytes, complete) = self.read_body(endpoint, resp).await?;
        if status.is_success() && !complete {
            let err = CoderError::TooLarge {
                endpoint,
                limit: self.inner.max_body,
            };
            self.observe(endpoint, &err.status_label());
            return Err(err);
        }
        self.observe(endpoint, status.as_str());
        if !status.is_success() {
            // An error body beyond the limit is cut there: its message is all we read from it.
            let bytes = redact(&bytes, self.inner.token.expose());
            let err = CoderError::from_response(endpoint, status.as_u16(), retry_after, &bytes);
            if status == StatusCode::TOO_MANY_REQUESTS {
                self.inner
                    .limiter
                    .back_off(path, retry_after.unwrap_or(Duration::from_secs(60)));
            }
            return Err(err);
        }
        serde_json::from_slice(&bytes).map_err(|e| CoderError::Decode {
            endpoint,
            detail: e.to_string(),
        })
    }

    /// Reads a response body chunk by chunk, at most [`ClientOptions::max_body_bytes`] of it.
    /// Returns the bytes and whether that was the whole body (false: it was larger, and the
    /// rest was not read).
    async fn read_body(
        &self,
        endpoint: &'static str,
        mut resp: reqwest::Response,
    ) -> Result<(Vec<u8>, bool), CoderError> {
        let limit = self.inner.max_body;
        let announced = resp.content_length().unwrap_or(0);
        if announced > limit as u64 {
            return Ok((Vec::new(), false));
        }
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(endpoint, e))?
        {
            let room = limit - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                return Ok((body, false));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, true))
    }

    /// `GET /api/v2/buildinfo`, sent without the session token: coderd serves it to anyone
    /// (`coderd/coderd.go` mounts it before the API key middleware), so a look at whether Coder
    /// answers never carries a user's token.
    pub async fn build_info(&self) -> Result<CoderVersion, CoderError> {
        self.send(
            Method::GET,
            "/api/v2/buildinfo",
            "/api/v2/buildinfo",
            None,
            Caller::Anonymous,
        )
        .await
    }

    /// `GET /api/v2/users/me`: validates the token.
    pub async fn me(&self) -> Result<User, CoderError> {
        self.call(Method::GET, "/api/v2/users/me", "/api/v2/users/me", None)
            .await
    }

    /// `GET /api/v2/users/{user}` (id or username; 400 when no such user). A `user` that is
    /// not `me`, a UUID or a Coder username is refused without a call ([`CoderError::InvalidName`]).
    pub async fn get_user(&self, user: &str) -> Result<User, CoderError> {
        const ENDPOINT: &str = "/api/v2/users/{user}";
        let user = names::check_user(user)
            .and_then(|()| path_segment(user))
            .map_err(|problem| CoderError::InvalidName {
                endpoint: ENDPOINT,
                what: "user",
                problem,
            })?;
        self.call(
            Method::GET,
            ENDPOINT,
            &format!("/api/v2/users/{user}"),
            None,
        )
        .await
    }

    /// `GET {chat path}/{id}`: `/api/v2/chats` (v2.37+) or `/api/experimental/chats` (before).
    /// The path that answered is remembered; a 404 from it is checked on the other path once,
    /// so a Coder upgrade (or downgrade) that moves the chat API is followed without a restart.
    pub async fn get_chat(&self, id: Uuid) -> Result<Chat, CoderError> {
        let known = *self
            .inner
            .chat_path
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let order = match known {
            Some(ChatPath::Experimental) => [ChatPath::Experimental, ChatPath::V2],
            Some(ChatPath::V2) | None => [ChatPath::V2, ChatPath::Experimental],
        };
        let mut first_404 = None;
        for p in order {
            match self.get_chat_at(p, id).await {
                Ok(c) => {
                    if known != Some(p) {
                        if known.is_some() {
                            tracing::info!(
                                path = p.prefix(),
                                "Coder serves chats at another path now (upgraded?); following it"
                            );
                        }
                        *self
                            .inner
                            .chat_path
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(p);
                    }
                    return Ok(c);
                }
                // A 404 may mean "this Coder has no such route" (or no such chat): try the
                // other path before concluding.
                Err(e @ CoderError::NotFound { .. }) => {
                    first_404.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_404.unwrap_or(CoderError::NotFound {
            endpoint: "/api/v2/chats/{id}",
            message: "chat not found".into(),
        }))
    }

    async fn get_chat_at(&self, p: ChatPath, id: Uuid) -> Result<Chat, CoderError> {
        let endpoint = match p {
            ChatPath::V2 => "/api/v2/chats/{id}",
            ChatPath::Experimental => "/api/experimental/chats/{id}",
        };
        self.call::<ChatResponse>(Method::GET, endpoint, &format!("{}/{id}", p.prefix()), None)
            .await
            .map(ChatResponse::into_chat)
    }

    /// `GET /api/v2/workspaces/{id}` (410 when deleted).
    pub async fn get_workspace(&self, id: Uuid) -> Result<Workspace, CoderError> {
        self.call(
            Method::GET,
            "/api/v2/workspaces/{id}",
            &format!("/api/v2/workspaces/{id}"),
            None,
        )
        .await
    }

    /// `GET /api/v2/users/{owner}/workspace/{name}` (404 when deleted). An `owner` that is not
    /// `me`, a UUID or a Coder username, or a `name` that is not a Coder workspace name, is
    /// refused without a call ([`CoderError::InvalidName`]).
    pub async fn get_workspace_by_name(
        &self,
        owner: &str,
        name: &str,
    ) -> Result<Workspace, CoderError> {
        const ENDPOINT: &str = "/api/v2/users/{user}/workspace/{name}";
        let invalid = |what, problem| CoderError::InvalidName {
            endpoint: ENDPOINT,
            what,
            problem,
        };
        let owner = names::check_user(owner)
            .and_then(|()| path_segment(owner))
            .map_err(|p| invalid("workspace owner", p))?;
        let name = names::check_name(name)
            .and_then(|()| path_segment(name))
            .map_err(|p| invalid("workspace name", p))?;
        self.call(
            Method::GET,
            ENDPOINT,
            &format!("/api/v2/users/{owner}/workspace/{name}"),
            None,
        )
        .await
    }

    /// `POST /api/v2/workspaces/{id}/builds` → 201 `WorkspaceBuild`.
    pub async fn create_build(
        &self,
        workspace: Uuid,
        req: &CreateWorkspaceBuildRequest,
    ) -> Result<WorkspaceBuild, CoderError> {
        self.call(
            Method::POST,
            "/api/v2/workspaces/{id}/builds",
            &format!("/api/v2/workspaces/{workspace}/builds"),
            Some(req),
        )
        .await
    }

    /// `GET /api/v2/workspacebuilds/{id}`.
    pub async fn get_build(&self, id: Uuid) -> Result<WorkspaceBuild, CoderError> {
        self.call(
            Method::GET,
            "/api/v2/workspacebuilds/{id}",
            &format!("/api/v2/workspacebuilds/{id}"),
            None,
        )
        .await
    }

    /// `GET /api/v2/workspacebuilds/{id}/logs?after=N`: the build's provisioner logs after log
    /// `after` (0: from the start), as far as they are written. The body limit bounds the page.
    pub async fn get_build_logs(
        &self,
        id: Uuid,
        after: i64,
    ) -> Result<Vec<super::logs::ProvisionerJobLog>, CoderError> {
        let query = if after > 0 {
            format!("?after={after}")
        } else {
            String::new()
        };
        self.call(
            Method::GET,
            "/api/v2/workspacebuilds/{id}/logs",
            &format!("/api/v2/workspacebuilds/{id}/logs{query}"),
            None,
        )
        .await
    }

    /// `GET /api/v2/workspacebuilds/{id}` read for its job's error (for the logs endpoint only).
    pub async fn get_build_job(&self, id: Uuid) -> Result<super::logs::BuildJob, CoderError> {
        self.call(
            Method::GET,
            "/api/v2/workspacebuilds/{id}",
            &format!("/api/v2/workspacebuilds/{id}"),
            None,
        )
        .await
    }

    /// `GET /api/v2/workspacebuilds/{id}/timings`.
    pub async fn get_build_timings(
        &self,
        id: Uuid,
    ) -> Result<super::logs::WorkspaceBuildTimings, CoderError> {
        self.call(
            Method::GET,
            "/api/v2/workspacebuilds/{id}/timings",
            &format!("/api/v2/workspacebuilds/{id}/timings"),
            None,
        )
        .await
    }

    /// `GET /api/v2/workspaces/{id}/watch`: a Server-Sent Events stream yielding the full
    /// workspace on connect and after every workspace event, and Coder's `error` events (after
    /// which coderd keeps the stream open). Ends when the connection closes, after a frame
    /// larger than [`ClientOptions::max_frame_bytes`] or one that is not the expected JSON, or
    /// when no frame (not even a ping) completed within [`ClientOptions::watch_idle`]; those
    /// end with an error.
    pub async fn watch_workspace(
        &self,
        id: Uuid,
    ) -> Result<impl Stream<Item = Result<WatchEvent, CoderError>> + Send + use<>, CoderError> {
        const ENDPOINT: &str = "/api/v2/workspaces/{id}/watch";
        let path = format!("/api/v2/workspaces/{id}/watch");
        self.inner.limiter.acquire(&path).await;
        let resp = self
            .inner
            .transport
            .stream_http
            .get(format!("{}{path}", self.inner.base))
            .header(SESSION_TOKEN_HEADER, self.inner.token.expose())
            .header(header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(ENDPOINT, e))?;
        let status = resp.status();
        self.observe(ENDPOINT, status.as_str());
        if !status.is_success() {
            let retry = retry_after(resp.headers());
            let (body, _) = self.read_body(ENDPOINT, resp).await?;
            return Err(CoderError::from_response(
                ENDPOINT,
                status.as_u16(),
                retry,
                &body,
            ));
        }
        let state = WatchState {
            bytes: Box::pin(resp.bytes_stream()),
            parser: SseParser::new(self.inner.max_frame),
            pending: VecDeque::new(),
            idle: self.inner.watch_idle,
            last_frame: tokio::time::Instant::now(),
            done: false,
        };
        Ok(futures::stream::unfold(state, WatchState::next))
    }
}

/// Route template of the watch stream.
const WATCH_ENDPOINT: &str = "/api/v2/workspaces/{id}/watch";

/// One event of a workspace watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The workspace as it is now (`event: data`).
    Workspace(Box<Workspace>),
    /// Coder could not render an update (`event: error`, e.g. "Internal error fetching
    /// workspace."): the stream stays open, but this change was not shown.
    Error(String),
}

/// A watch stream being read: the bytes, the frame parser and what it parsed but has not yet
/// handed out.
struct WatchState<S> {
    bytes: S,
    parser: SseParser,
    pending: VecDeque<Result<WatchEvent, CoderError>>,
    idle: Duration,
    last_frame: tokio::time::Instant,
    done: bool,
}

impl<S, B> WatchState<S>
where
    S: Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    /// The next workspace or error, and the state to go on from; `None` at the end.
    async fn next(mut self) -> Option<(Result<WatchEvent, CoderError>, WatchState<S>)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            let deadline = self.last_frame + self.idle;
            let chunk = match tokio::time::timeout_at(deadline, self.bytes.next()).await {
                Err(_) => Err(CoderError::WatchIdle {
                    endpoint: WATCH_ENDPOINT,
                    idle: self.idle,
                }),
                Ok(None) => return None,
                Ok(Some(Err(e))) => Err(CoderError::Connect {
                    endpoint: WATCH_ENDPOINT,
                    source: e.without_url(),
                }),
                Ok(Some(Ok(chunk))) => {
                    self.parser
                        .push(chunk.as_ref())
                        .map_err(|e| CoderError::TooLarge {
                            endpoint: WATCH_ENDPOINT,
                            limit: e.limit,
                        })
                }
            };
            match chunk {
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
                Ok(frames) => {
                    if !frames.is_empty() {
                        self.last_frame = tokio::time::Instant::now();
                    }
                    self.pending
                        .extend(frames.into_iter().filter_map(watch_item));
                }
            }
        }
    }
}

/// An error body with every copy of the session token replaced: Coder's message ends up in
/// status, Events and logs, and a hostile or buggy server could echo the token.
fn redact(body: &[u8], token: &str) -> Vec<u8> {
    let token = token.as_bytes();
    if token.is_empty() || body.len() < token.len() {
        return body.to_vec();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(token) {
            out.extend_from_slice(b"[redacted]");
            i += token.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// What a watch frame means: a workspace (`data`), Coder's error (`error`), or nothing (pings
/// and unknown events).
fn watch_item(frame: Frame) -> Option<Result<WatchEvent, CoderError>> {
    match frame.event.as_str() {
        "data" => Some(
            serde_json::from_slice(&frame.data)
                .map(|ws| WatchEvent::Workspace(Box::new(ws)))
                .map_err(|e| CoderError::Decode {
                    endpoint: WATCH_ENDPOINT,
                    detail: e.to_string(),
                }),
        ),
        "error" => {
            let message = match CoderError::from_response(WATCH_ENDPOINT, 500, None, &frame.data) {
                CoderError::Server { message, .. } => message,
                other => other.to_string(),
            };
            Some(Ok(WatchEvent::Error(message)))
        }
        _ => None,
    }
}

fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// What a path segment keeps as is: RFC 3986's unreserved characters.
const SEGMENT_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment. The names that reach it were checked against Coder's
/// rules ([`names`]); this is the second line: no byte of it can end the segment or start a
/// query, and an empty or dot segment (which URL parsers drop or collapse, encoded or not) is
/// refused.
fn path_segment(s: &str) -> Result<String, NameError> {
    match s {
        "" => Err(NameError::Empty),
        "." | ".." => Err(NameError::Shape),
        _ => Ok(percent_encoding::utf8_percent_encode(s, SEGMENT_KEEP).to_string()),
    }
}

mod erased {
    /// A JSON request body.
    pub trait Body: Send + Sync {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize + Send + Sync> Body for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_frames_become_workspaces_and_errors() {
        let ws = r#"{"id":"e3f4c0de-0000-4000-8000-000000000001","name":"dev","owner_id":"51aa0000-0000-4000-8000-000000000002","owner_name":"alice","latest_build":{"id":"6f1c0000-0000-4000-8000-000000000003","build_number":2,"transition":"start","status":"starting","job":{"id":"7a000000-0000-4000-8000-000000000004","status":"running"},"resources":[]}}"#;
        let frame = |event: &str, data: &str| Frame {
            event: event.into(),
            data: data.as_bytes().to_vec(),
        };
        assert!(watch_item(frame("ping", "")).is_none());
        let Some(Ok(WatchEvent::Workspace(w))) = watch_item(frame("data", ws)) else {
            panic!("want a workspace")
        };
        assert_eq!(w.name, "dev");
        assert_eq!(
            watch_item(frame("error", r#"{"message":"boom"}"#)).map(|r| r.ok()),
            Some(Some(WatchEvent::Error("boom".into()))),
            "Coder's error event keeps the stream going"
        );
        assert!(matches!(
            watch_item(frame("data", "{not json")),
            Some(Err(CoderError::Decode { .. }))
        ));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("alice").as_deref(), Ok("alice"));
        assert_eq!(path_segment("a/b c").as_deref(), Ok("a%2Fb%20c"));
        assert_eq!(path_segment("a?b#c%2e").as_deref(), Ok("a%3Fb%23c%252e"));
        for dot in ["", ".", ".."] {
            assert!(path_segment(dot).is_err(), "{dot:?}");
        }
    }

    #[test]
    fn unusable_urls_are_config_errors() {
        let o = ClientOptions::default();
        for (url, why) in [
            (
                "ftp://x",
                "the Coder URL has scheme \"ftp\"; use http or https",
            ),
            (
                "https://x/?a=b",
                "the Coder URL has a query; use http(s)://host[:port][/path]",
            ),
        ] {
            match CoderClient::new(url, token("t"), &o) {
                Err(CoderError::Config(m)) => assert_eq!(m, why, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    fn token(t: &str) -> SessionToken {
        SessionToken::parse(t).expect("token")
    }

    /// A client for `url` with a 300 ms request timeout.
    fn quick_client(url: &str, t: &str) -> CoderClient {
        let o = ClientOptions {
            request_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        CoderClient::new(url, token(t), &o).expect("client")
    }

    #[tokio::test]
    async fn outages_name_their_cause_without_the_url() {
        // A port nobody listens on: connection refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let e = quick_client(&url, "t").me().await.expect_err("refused");
        assert_eq!(
            e.transient_cause(),
            "/api/v2/users/me: cannot connect to Coder: connection refused"
        );
        // A server that accepts and never answers: the request timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", silent.local_addr().expect("addr"));
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let e = quick_client(&url, "t").me().await.expect_err("timeout");
        assert_eq!(e.transient_cause(), "/api/v2/users/me timed out after 0.3s");
        held.abort();
    }

    #[tokio::test]
    async fn a_5xx_names_its_status_and_never_echoes_the_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let body = r#"{"message":"database down for token s3cr3t-tok"}"#;
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            }
        });
        let e = quick_client(&url, "s3cr3t-tok")
            .me()
            .await
            .expect_err("503");
        assert_eq!(
            e.transient_cause(),
            "HTTP 503 from /api/v2/users/me: database down for token [redacted]"
        );
    }

    /// Serves one request, answering `body` with 200, and returns the request's head.
    async fn one_request(body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let head = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok((mut c, _)) = listener.accept().await else {
                return String::new();
            };
            let mut buf = vec![0u8; 8192];
            let n = c.read(&mut buf).await.unwrap_or(0);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.write_all(resp.as_bytes()).await;
            String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
        });
        (url, head)
    }

    #[tokio::test]
    async fn buildinfo_goes_without_the_token_and_every_other_call_with_it() {
        let (url, head) = one_request(r#"{"version":"v2.37.0","external_url":""}"#).await;
        quick_client(&url, "s3cr3t-tok")
            .build_info()
            .await
            .expect("buildinfo");
        let head = head.await.expect("request");
        assert!(head.starts_with("get /api/v2/buildinfo "), "{head}");
        assert!(!head.contains("s3cr3t-tok"), "token sent: {head}");
        assert!(!head.contains("coder-session-token"), "{head}");

        let (url, head) = one_request(r#"{"message":"no"}"#).await;
        let _ = quick_client(&url, "s3cr3t-tok").me().await;
        let head = head.await.expect("request");
        assert!(
            head.contains("coder-session-token: s3cr3t-tok"),
            "a user's call carries the token: {head}"
        );
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[tokio::test]
    async fn an_untrusted_certificate_is_its_own_error_naming_host_and_reason() {
        let ca = coder_sim::TestCa::generate("Example Corp Private CA").expect("CA");
        let srv = coder_sim::SimServer::start(coder_sim::SimConfig {
            tls: Some(ca.tls.clone()),
            ..coder_sim::SimConfig::default()
        })
        .await
        .expect("sim");
        let token = SessionToken::parse("t").expect("token");
        let client =
            CoderClient::new(&srv.url(), token.clone(), &ClientOptions::default()).expect("client");
        match client.build_info().await.expect_err("untrusted") {
            CoderError::TlsUntrusted { host, reason, .. } => {
                assert_eq!(host, "127.0.0.1");
                assert_eq!(
                    reason,
                    r#"it is issued by "CN=Example Corp Private CA", a CA that is not trusted (unknown issuer)"#
                );
            }
            other => panic!("want TlsUntrusted: {other:?}"),
        }
        let trust = Trust::platform()
            .and_then(|t| t.with_pem(ca.ca_pem.as_bytes()))
            .expect("trust");
        let opts = ClientOptions {
            trust: Some(trust),
            ..ClientOptions::default()
        };
        let client = CoderClient::new(&srv.url(), token, &opts).expect("client");
        client.build_info().await.expect("trusted with the CA");
    }
}
