//! The operations port: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::health::Health;

/// Serves the operations port until the process ends. A deliberately tiny HTTP/1.0 responder:
/// three GET routes do not justify a web framework.
async fn serve_http(listener: TcpListener, handle: PrometheusHandle, health: Arc<Health>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: keep serving once it passes.
                tracing::warn!(error = %e, "operations port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", handle.render()),
                "/healthz" if health.alive(Duration::from_secs(30)) => {
                    ("200 OK", "text/plain", "ok\n".into())
                }
                "/healthz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "no progress\n".into(),
                ),
                "/readyz" => match health.readiness() {
                    Ok(()) => ("200 OK", "text/plain", "ready\n".into()),
                    Err(reason) => (
                        "503 Service Unavailable",
                        "text/plain",
                        format!("not ready: {reason}\n"),
                    ),
                },
                _ => ("404 Not Found", "text/plain", "not found\n".into()),
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

/// Binds the operations port before anything else starts: a port in use stops startup with a
/// message naming `http.listen`, instead of a process that runs without its health checks.
/// Returns the metrics handle (the demo reads its summary from it).
pub async fn start(listen: &str, health: Arc<Health>) -> anyhow::Result<PrometheusHandle> {
    let handle = super::telemetry::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    tokio::spawn(super::sample_process(handle.clone()));
    if listen.is_empty() {
        return Ok(handle);
    }
    let addr: SocketAddr = listen.parse()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen = {addr}: cannot listen: {e}"))?;
    tracing::info!(%addr, "operations port listening");
    tokio::spawn(serve_http(listener, handle.clone(), health));
    Ok(handle)
}
