//! HTTP beside gRPC: health endpoints for load balancers and orchestration, Prometheus
//! metrics, and the per-pool scaling signal KEDA polls.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::metrics::CONTENT_TYPE;
use crate::scaling::PoolSignal;
use crate::service::Coordinator;
use crate::spec;

pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/scaling", get(all_pools))
        .route("/scaling/{pool}", get(one_pool))
        .with_state(coordinator)
}

/// Ready when the store answers a query (migrations ran at connect).
async fn readyz(State(c): State<Arc<Coordinator>>) -> (StatusCode, String) {
    match c.store().list_jobs(1).await {
        Ok(_) => (StatusCode::OK, "ready".into()),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {err}"),
        ),
    }
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> Response {
    match c.render_metrics().await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => unavailable(err),
    }
}

#[derive(Serialize)]
struct AllPools {
    pools: Vec<PoolSignal>,
}

/// `?target=N`: tasks per worker, overriding the coordinator's `--tasks-per-worker`, so each
/// pool's ScaledObject can carry its own target.
fn target(query: &HashMap<String, String>) -> Result<Option<u32>, Response> {
    match query.get("target") {
        None => Ok(None),
        Some(t) => match t.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err((
                StatusCode::BAD_REQUEST,
                format!("target {t:?} must be a whole number of tasks per worker, 1 or more"),
            )
                .into_response()),
        },
    }
}

/// Every pool with unfinished tasks.
async fn all_pools(
    State(c): State<Arc<Coordinator>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let target = match target(&query) {
        Ok(t) => t,
        Err(bad) => return bad,
    };
    match c.scaling(&[], target).await {
        Ok(signals) => Json(AllPools {
            pools: signals.into_values().collect(),
        })
        .into_response(),
        Err(err) => unavailable(err),
    }
}

/// One pool, answered even when it has nothing to do (then `desired_workers` is 0): this is
/// the URL a pool's KEDA ScaledObject polls.
async fn one_pool(
    State(c): State<Arc<Coordinator>>,
    Path(pool): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !spec::is_pool_name(&pool) {
        let msg = format!("{pool:?} is not a pool name ({})", spec::POOL_NAME_RULE);
        return (StatusCode::NOT_FOUND, msg).into_response();
    }
    let target = match target(&query) {
        Ok(t) => t,
        Err(bad) => return bad,
    };
    match c.scaling(&[&pool], target).await {
        Ok(mut signals) => Json(signals.remove(&pool).unwrap_or_default()).into_response(),
        Err(err) => unavailable(err),
    }
}

/// The store did not answer: the scaler and the scraper should keep their last value.
fn unavailable(err: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("store unavailable: {err}"),
    )
        .into_response()
}
