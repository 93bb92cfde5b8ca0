//! A small HTTP/1.1 server for `/metrics` (hyper, one task per connection): what the daemon
//! and the scheduler run on `--metrics-addr`. Bound before the service reports ready, so an
//! address in use fails the start instead of going unnoticed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};

/// A scrape that sends no complete request head in this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Renders the exposition for one scrape.
pub type Render = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The text exposition (format 0.0.4) of everything in `registry`.
pub fn encode(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    // Writing into a Vec fails only on an invalid metric family, which the registry rejects
    // at registration.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    out
}

/// A bound `/metrics` listener.
#[derive(Debug)]
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
}

impl MetricsServer {
    /// Binds `addr`. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        Ok(Self { listener: tokio::net::TcpListener::from_std(std_listener)? })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` with `render` until `shutdown` completes. Scrapes in progress
    /// are cut at shutdown: a scrape is cheap to repeat.
    pub async fn run(self, render: Render, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (stream, _) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let render = render.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let render = render.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &render)) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics: connection ended with an error");
                }
            });
        }
        connections.abort_all();
    }
}

fn respond(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", Bytes::from(render()))
        }
        (&Method::GET | &Method::HEAD, "/") => {
            (StatusCode::OK, "text/plain; charset=utf-8", Bytes::from_static(b"metrics are on /metrics\n"))
        }
        (&Method::GET | &Method::HEAD, _) => {
            (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", Bytes::from_static(b"not found; try /metrics\n"))
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", Bytes::from_static(b"only GET\n")),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_the_registry_on_metrics_and_404_elsewhere() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("store_test_total", "a test counter").expect("counter");
        registry.register(Box::new(c.clone())).expect("register");
        c.inc_by(7);
        let server = MetricsServer::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = server.local_addr().expect("addr");
        let stop = stop_signal();
        let render: Render = Arc::new(move || encode(&registry));
        let task = tokio::spawn(server.run(render, stop.1));
        let ok = get(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("store_test_total 7"), "{ok}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let _ = stop.0.send(());
        task.await.expect("server task");
    }

    fn stop_signal() -> (tokio::sync::oneshot::Sender<()>, impl Future<Output = ()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }
}
