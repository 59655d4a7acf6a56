//! Shared helpers: an HTTP client bound to one token, and shape assertions.

use std::time::Duration;

use coder_sim::{BuildScript, LifecycleState, SimConfig, SimServer};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(server: &SimServer, token: Option<&str>) -> Api {
        Api {
            base: server.url(),
            token: token.map(str::to_owned),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    pub fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.header("Coder-Session-Token", t);
        }
        r
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let resp = rb.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(self.req(reqwest::Method::POST, path).json(&body))
            .await
    }

    pub async fn start(&self, ws: uuid::Uuid) -> Resp {
        self.post(
            &format!("/api/v2/workspaces/{ws}/builds"),
            serde_json::json!({"transition": "start"}),
        )
        .await
    }
}

pub async fn server() -> SimServer {
    server_with(SimConfig::default()).await
}

pub async fn server_with(cfg: SimConfig) -> SimServer {
    SimServer::start(cfg).await.expect("start sim")
}

/// A fast script: 100 ms pending, 150 ms running, agents connect after
/// 100 ms and are ready 100 ms later.
pub fn fast() -> BuildScript {
    BuildScript::default()
        .with_job(Duration::from_millis(100), Duration::from_millis(150))
        .with_agent(
            Duration::from_millis(100),
            Duration::from_millis(100),
            LifecycleState::Ready,
        )
}

/// Asserts that `v` is an object containing every key.
#[track_caller]
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    for k in keys {
        assert!(obj.contains_key(*k), "missing key {k:?} in {v}");
    }
}

#[track_caller]
pub fn assert_uuid(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    uuid::Uuid::parse_str(s).unwrap_or_else(|e| panic!("not a uuid {s:?}: {e}"));
}

#[track_caller]
pub fn assert_time(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    s.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("not RFC 3339 {s:?}: {e}"));
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
