//! The MCP server as the chart runs it: the chart's MCP objects (ServiceAccount, RBAC) applied to
//! the test namespace, and the `mcp` command running as that ServiceAccount on a free loopback
//! port, watching that namespace only.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

use super::opproc::{Launch, Proc, helm_template};
use super::{Env, RELEASE, free_port};

/// How long the MCP server may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running MCP server of one test namespace.
pub struct McpServer {
    /// The `mcp` process (logs, metrics, `/readyz`, termination).
    pub proc: Proc,
    /// `127.0.0.1:port` of its endpoint.
    pub addr: String,
    /// Username of its ServiceAccount (as the API server's audit log names it).
    pub user: String,
}

impl McpServer {
    /// Applies the chart's MCP objects (chart rendered with `mcp.enabled=true` and `env`'s
    /// namespace watched) and starts `mcp` as the chart's MCP ServiceAccount with `extra` flags
    /// after `--listen` and `--namespaces`; returns once `/readyz` answers 200.
    pub async fn start(env: &Env, extra: &[&str]) -> McpServer {
        let ns = &env.ns;
        let fullname = format!("wso-{ns}");
        let yaml = helm_template(
            RELEASE,
            ns,
            &[
                format!("--set=fullnameOverride={fullname}"),
                format!("--set=watchNamespaces={{{ns}}}"),
                "--set=coder.url=https://coder.example.com".into(),
                "--set=coder.token=unused".into(),
                "--set=mcp.enabled=true".into(),
            ],
        );
        let docs = mcp_objects(&yaml);
        assert!(docs.contains("kind: Deployment"), "{docs}");
        env.plane
            .apply_yaml(&docs, ns)
            .await
            .expect("apply MCP objects");
        let sa = format!("{fullname}-mcp");
        let (_, kubeconfig) = env
            .plane
            .service_account_client(ns, &sa)
            .await
            .expect("MCP ServiceAccount kubeconfig");
        let port = free_port();
        let mut args = vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--namespaces={ns}"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let proc = Proc::spawn_command(
            "mcp",
            Launch {
                kubeconfig: &kubeconfig,
                dir: env.dir.path(),
                args,
                env: vec![],
            },
        );
        proc.wait_status("/readyz", 200, READY_WITHIN).await;
        McpServer {
            proc,
            addr: format!("127.0.0.1:{port}"),
            user: format!("system:serviceaccount:{ns}:{sa}"),
        }
    }

    /// `http://127.0.0.1:port/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }
}

/// The documents of a rendered chart that belong to the MCP server.
fn mcp_objects(yaml: &str) -> String {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).expect("yaml document");
        if v["metadata"]["labels"]["app.kubernetes.io/component"] == "mcp" {
            out.push(serde_yaml::to_string(&v).expect("yaml"));
        }
    }
    out.join("---\n")
}

/// The JSON-RPC body of an MCP `tools/list` call.
pub const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

/// A raw MCP POST of `body` to `url` with the headers the streamable HTTP transport requires,
/// as `token`'s caller (None: no token at all).
pub fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: String,
) -> reqwest::RequestBuilder {
    let req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body);
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}
