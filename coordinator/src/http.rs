//! HTTP beside gRPC: health endpoints for load balancers and orchestration.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, routing::get, Router};

use crate::service::Coordinator;

pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(coordinator)
}

/// Ready when the store answers a query (migrations ran at connect).
async fn readyz(State(c): State<Arc<Coordinator>>) -> (StatusCode, String) {
    match c.store().list_jobs(1).await {
        Ok(_) => (StatusCode::OK, "ready".into()),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unavailable: {err}")),
    }
}
