//! The operations port, on actix-web: `/metrics`, `/healthz`, `/readyz`, the web console at `/`
//! with its assets, and the console's read-only JSON under `/api/`.
//!
//! One worker thread is plenty for scrapes, probes and a page that polls every 1.5 s. The sales
//! query runs on the main runtime with a timeout (`console.rs`), so a slow store never holds up
//! `/metrics` or `/healthz`, which answer from memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

use super::console::{Console, SalesSource};
use super::health::Health;

/// `/healthz` fails when nothing has shown progress for this long.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// What the operations port serves from, besides the metrics handle.
pub struct OpsSettings {
    /// `http.listen`; empty: no port (metrics are still recorded).
    pub listen: String,
    pub health: Arc<Health>,
    /// The OLAP store, for the console's sales; None where the process has none (`produce`).
    pub sales: Option<Arc<dyn SalesSource>>,
    /// `pipeline.max_in_flight_batches`, shown against the batches in flight.
    pub max_in_flight: usize,
}

#[derive(Clone)]
struct Shared {
    handle: PrometheusHandle,
    health: Arc<Health>,
    console: Arc<Console>,
}

/// Installs the metrics recorder and starts the process sampler; then binds the operations port
/// and serves it. Binding comes before anything else starts: a port in use stops startup with a
/// message naming `http.listen`, instead of a process that runs without its health checks.
/// Returns the metrics handle (the demo reads its summary from it).
pub async fn start(settings: OpsSettings) -> anyhow::Result<PrometheusHandle> {
    let handle = super::telemetry::install().map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    tokio::spawn(super::sample_process(handle.clone()));
    let console = Arc::new(Console::new(
        handle.clone(),
        settings.health.clone(),
        settings.sales,
        settings.max_in_flight,
    ));
    tokio::spawn(console.clone().sample_forever());
    if settings.listen.is_empty() {
        return Ok(handle);
    }
    let addr: SocketAddr = settings.listen.parse()?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("http.listen = {addr}: cannot listen: {e}"))?;
    let shared = Shared {
        handle: handle.clone(),
        health: settings.health,
        console,
    };
    let server = HttpServer::new(move || routes(App::new(), shared.clone()))
        .workers(1)
        .max_connections(256)
        .backlog(64)
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(Duration::from_secs(15))
        .disable_signals()
        .listen(listener)?
        .run();
    tracing::info!(%addr, "operations port listening");
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "operations port stopped");
        }
    });
    Ok(handle)
}

fn routes<T>(app: App<T>, shared: Shared) -> App<T>
where
    T: actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Error = actix_web::Error,
        InitError = (),
    >,
{
    app.app_data(web::Data::new(shared))
        // The console's requests carry no body; refuse any.
        .app_data(web::PayloadConfig::new(0))
        .route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/", web::get().to(page))
        .route("/assets/{name}", web::get().to(asset))
        .route("/api/pipeline", web::get().to(api_pipeline))
        .route("/api/sales", web::get().to(api_sales))
        .route("/api/dead-letters", web::get().to(api_dead_letters))
        .default_service(web::to(not_found))
}

async fn metrics(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(shared.handle.render())
}

async fn healthz(shared: web::Data<Shared>) -> HttpResponse {
    if shared.health.alive(STALE_AFTER) {
        text(HttpResponse::Ok(), "ok\n".into())
    } else {
        text(HttpResponse::ServiceUnavailable(), "no progress\n".into())
    }
}

async fn readyz(shared: web::Data<Shared>) -> HttpResponse {
    match shared.health.readiness() {
        Ok(()) => text(HttpResponse::Ok(), "ready\n".into()),
        Err(reason) => text(
            HttpResponse::ServiceUnavailable(),
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn not_found() -> HttpResponse {
    text(HttpResponse::NotFound(), "not found\n".into())
}

fn text(mut response: actix_web::HttpResponseBuilder, body: String) -> HttpResponse {
    response.content_type("text/plain").body(body)
}

/// The console's page and assets, embedded in the binary.
const PAGE: &str = include_str!("console/index.html");
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("console/console.js"),
    ),
    (
        "uplot.js",
        "text/javascript; charset=utf-8",
        include_str!("console/uPlot.iife.min.js"),
    ),
    (
        "uplot.css",
        "text/css; charset=utf-8",
        include_str!("console/uPlot.min.css"),
    ),
];

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // Nothing but this origin: no CDN, no request leaving the host.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
        ))
        .body(PAGE)
}

async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(n, _, _)| *n == name.as_str()) {
        Some((_, content_type, body)) => HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header((header::CACHE_CONTROL, "max-age=3600"))
            .body(*body),
        None => text(HttpResponse::NotFound(), "not found\n".into()),
    }
}

async fn api_pipeline(shared: web::Data<Shared>) -> HttpResponse {
    json(shared.console.pipeline())
}

async fn api_sales(shared: web::Data<Shared>) -> HttpResponse {
    json(shared.console.sales().await)
}

async fn api_dead_letters(shared: web::Data<Shared>) -> HttpResponse {
    json(shared.console.dead_letters())
}

fn json(value: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(value)
}
