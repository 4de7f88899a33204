//! The `--metrics` endpoint: the latest counters in the Prometheus text
//! format, at `/metrics` over HTTP/1.1.
//!
//! hyper serves it on a one-thread tokio runtime of its own, beside the
//! watch loop that publishes a new text every interval. Each connection is
//! served on its own task, so idle or slow clients do not hold up a
//! scrape; a connection lives at most [`CONNECTION_LIMIT`], and at most
//! [`MAX_CONNECTIONS`] are open at once.

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is served, reading the reply included: a
/// client that stops reading holds only its own connection, this long.
const CONNECTION_LIMIT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: usize = 64;

/// The text the endpoint serves; `None` until the first sample.
#[derive(Clone, Default)]
pub struct Metrics {
    text: Arc<Mutex<Option<String>>>,
}

impl Metrics {
    pub fn publish(&self, text: String) {
        if let Ok(mut t) = self.text.lock() {
            *t = Some(text);
        }
    }
}

/// `--metrics`: `HOST:PORT`, or a bare port, which binds 127.0.0.1 (the
/// text shows the policy's rules: exposing it is a choice to make).
pub fn listen_addr(s: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("`{s}` is not PORT or ADDRESS:PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)"))
}

/// Starts serving on `addr` (bound before this returns, so that a port in
/// use is an error now) from a background thread.
pub fn serve(addr: SocketAddr) -> Result<Metrics> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} for --metrics"))?;
    listener.set_nonblocking(true).context("--metrics listener")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().context("--metrics runtime")?;
    let metrics = Metrics::default();
    let shared = metrics.clone();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(accept_loop(listener, shared)))
        .context("--metrics thread")?;
    Ok(metrics)
}

async fn accept_loop(listener: std::net::TcpListener, metrics: Metrics) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("warning: --metrics stopped: {e}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or the like: try again shortly.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &metrics);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            // One request per connection: the limit below then never cuts a
            // keep-alive connection between two replies, only a slow one.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, connection).await;
            drop(slot);
        });
    }
}

fn respond<B>(request: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "try /metrics\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n".into());
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let text = metrics.text.lock().ok().and_then(|t| t.clone());
    let Some(text) = text else {
        // Not an empty 200: that would read as a policy with no rules.
        let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, "no sample yet: retry after one interval\n".into());
        r.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
        return r;
    };
    let mut r = reply(StatusCode::OK, text);
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}
