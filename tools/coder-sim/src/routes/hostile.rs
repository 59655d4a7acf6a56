//! The answers of the hostile faults ([`crate::faults::Fault`]): what a Coder URL that answers
//! anything may send. Bodies are streamed, so the simulator itself never holds a huge one.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

/// Size of each chunk of a streamed hostile body.
const CHUNK: usize = 64 * 1024;

fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `prefix`, then `len` bytes of `x`, then `suffix`, in chunks.
fn padded(prefix: &'static str, len: u64, suffix: &'static str) -> Body {
    let full = (len / CHUNK as u64) as usize;
    let rest = (len % CHUNK as u64) as usize;
    let chunks = std::iter::once(Bytes::from_static(prefix.as_bytes()))
        .chain(std::iter::repeat_n(Bytes::from(vec![b'x'; CHUNK]), full))
        .chain(std::iter::once(Bytes::from(vec![b'x'; rest])))
        .chain(std::iter::once(Bytes::from_static(suffix.as_bytes())));
    Body::from_stream(futures::stream::iter(chunks.map(Ok::<_, Infallible>)))
}

/// 200 with a JSON document of about `bytes` bytes, without `Content-Length`.
pub(crate) fn huge_body(bytes: u64) -> Response {
    with_type(
        StatusCode::OK,
        "application/json",
        padded(r#"{"message":""#, bytes, r#""}"#),
    )
}

/// 200 with an HTML page where JSON belongs (e.g. a proxy's error page).
pub(crate) fn invalid_json() -> Response {
    with_type(
        StatusCode::OK,
        "text/html",
        Body::from("<html><body>502 Bad Gateway</body></html>"),
    )
}

/// `status` with a Coder error body whose message is `bytes` long.
pub(crate) fn big_message(status: u16, bytes: u64) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    with_type(
        status,
        "application/json",
        padded(
            r#"{"message":""#,
            bytes,
            r#"","detail":"coder-sim: big message"}"#,
        ),
    )
}

/// `resp`, its body sent `bytes_per_sec` bytes per second.
pub(crate) async fn drip(resp: Response, bytes_per_sec: u32) -> Response {
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let every = Duration::from_secs(1) / bytes_per_sec.max(1);
    let stream = futures::stream::iter(bytes.to_vec()).then(move |b| async move {
        tokio::time::sleep(every).await;
        Ok::<_, Infallible>(Bytes::from(vec![b]))
    });
    let mut resp = Response::from_parts(parts, Body::from_stream(stream));
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp
}

/// The keys whose string values [`huge_names`] lengthens.
const NAME_KEYS: [&str; 4] = ["name", "owner_name", "username", "workspace_name"];

/// `resp` with every name in its JSON body lengthened by `bytes` bytes of `x` (a body that is
/// not JSON is passed on as it is).
pub(crate) async fn huge_names(resp: Response, bytes: u64) -> Response {
    let (parts, body) = resp.into_parts();
    let Ok(raw) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(&raw) else {
        return Response::from_parts(parts, Body::from(raw));
    };
    let pad = "x".repeat(usize::try_from(bytes).unwrap_or(usize::MAX >> 1));
    lengthen_names(&mut doc, &pad);
    let mut resp = Response::from_parts(parts, Body::from(doc.to_string()));
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp
}

fn lengthen_names(v: &mut serde_json::Value, pad: &str) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(s) if NAME_KEYS.contains(&k.as_str()) => {
                        s.push_str(pad)
                    }
                    other => lengthen_names(other, pad),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| lengthen_names(i, pad)),
        _ => {}
    }
}

/// 200 `text/event-stream`, then `x` forever without a line end, as fast as it is read.
pub(crate) fn unterminated_sse() -> Response {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures::stream::repeat(chunk).then(|c| async move {
        // Yield between chunks so a stream nobody reads costs nothing.
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(c)
    });
    with_type(
        StatusCode::OK,
        "text/event-stream",
        Body::from_stream(stream),
    )
}

/// 200 `text/event-stream`, then nothing until the simulator shuts down.
pub(crate) fn silent_sse(mut shutdown: tokio::sync::watch::Receiver<bool>) -> Response {
    let stream = futures::stream::once(async move {
        let _ = shutdown.wait_for(|v| *v).await;
        Ok::<_, Infallible>(Bytes::new())
    });
    with_type(
        StatusCode::OK,
        "text/event-stream",
        Body::from_stream(stream),
    )
}
