//! A coordinator with bearer tokens on a real loopback socket (SQLite store), and clients
//! that present a token: shared by the auth and job-control tests.
#![allow(dead_code)]

use std::sync::Arc;

use sdfarm_coordinator::auth::Tokens;
use sdfarm_coordinator::store::open_store;
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_proto::auth::Bearer;
use sdfarm_proto::v1::{
    job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const CLIENT: &str = "client-token-0123456789";
/// A second client, "bob", for checks that one client cannot steer another's jobs.
pub const OTHER_CLIENT: &str = "client-token-bob-0123456789";
pub const WORKER: &str = "worker-token-0123456789";
pub const ADMIN: &str = "admin-token-0123456789";

pub struct Farm {
    pub addr: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Farm {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = open_store(&url).await.unwrap();
    let tokens = Tokens::parse(&format!(
        "client {CLIENT} alice\nclient {OTHER_CLIENT} bob\nworker {WORKER} gpu-1\nadmin {ADMIN} ops\n"
    ))
    .unwrap();
    let config = CoordinatorConfig {
        tokens,
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sdfarm_coordinator::run(
        listener,
        None,
        coordinator,
        async {
            let _ = stopped.await;
        },
    ));
    Farm {
        addr,
        _stop: stop,
        _dir: dir,
    }
}

pub type Jobs = JobServiceClient<InterceptedService<Channel, Bearer>>;
pub type Workers = WorkerServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn channel(farm: &Farm) -> Channel {
    Channel::from_shared(farm.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn jobs(farm: &Farm, token: Option<&str>) -> Jobs {
    JobServiceClient::with_interceptor(channel(farm).await, Bearer::new(token).unwrap())
}

pub async fn workers(farm: &Farm, token: Option<&str>) -> Workers {
    WorkerServiceClient::with_interceptor(channel(farm).await, Bearer::new(token).unwrap())
}
