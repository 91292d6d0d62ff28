//! sdfarm's coordinator: parses and expands sweeps, stores jobs and tasks durably, and leases
//! tasks to workers over gRPC.
//!
//! `run` is the entry point of the `sdfarm coordinator` command and of the embedded
//! `sdfarm run`; tests bind `127.0.0.1:0` and call it in-process.

pub mod auth;
pub mod clock;
mod completions;
pub mod dataset;
pub mod dynamic;
pub mod error;
pub mod events;
pub mod expand;
pub mod grid;
pub mod grpc;
pub mod http;
pub mod job_control;
pub mod manifest;
pub mod metrics;
pub mod relay;
pub mod scaling;
pub mod scheduling;
pub mod service;
pub mod sim;
pub mod spec;
pub mod store;
pub mod tls;
pub mod workers;

use std::future::Future;
use std::sync::Arc;

use sdfarm_proto::v1::{
    job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use clock::{Clock, SystemClock};
pub use error::{Error, Result};
pub use service::{Coordinator, CoordinatorConfig};

/// Serves gRPC on `grpc` (and HTTP — health, metrics, scaling signal — on `http`, if given)
/// and runs the rescuer, until `shutdown` resolves.
pub async fn run(
    grpc: TcpListener,
    http: Option<TcpListener>,
    coordinator: Arc<Coordinator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), ServeError> {
    // TLS first: a certificate that does not load stops the start before anything runs.
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &coordinator.config().tls {
        server = server.tls_config(tls.server_config())?;
    }
    let rescuer = tokio::spawn(coordinator.clone().rescue_loop());
    let grids = tokio::spawn(coordinator.clone().grid_loop());
    let manifests = tokio::spawn(coordinator.clone().manifest_loop());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http_task = http.map(|listener| {
        let mut stop = stop_rx.clone();
        let router = http::router(coordinator.clone());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    });
    let tokens = coordinator.config().tokens.clone();
    let api = grpc::GrpcApi::new(coordinator);
    tracing::info!(addr = ?grpc.local_addr().ok(), open = tokens.is_open(), "coordinator listening");
    let result = server
        .add_service(JobServiceServer::with_interceptor(
            api.clone(),
            tokens.guard(auth::Service::Jobs),
        ))
        .add_service(WorkerServiceServer::with_interceptor(
            api,
            tokens.guard(auth::Service::Workers),
        ))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), shutdown)
        .await;
    let _ = stop_tx.send(true);
    rescuer.abort();
    grids.abort();
    manifests.abort();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    result.map_err(ServeError::from)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}
