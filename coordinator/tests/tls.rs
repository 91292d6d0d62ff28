//! gRPC over TLS on a real loopback socket, with a CA and a server certificate made for the
//! test: a client trusting that CA gets answers, a plaintext client and a client trusting
//! other roots get none, and certificate files that are missing or not PEM stop the start.

use std::sync::Arc;

use sdfarm_coordinator::store::open_store;
use sdfarm_coordinator::tls::TlsIdentity;
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_proto::v1::{self as pb, job_service_client::JobServiceClient};

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1: (CA PEM, cert PEM, key PEM).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

struct Farm {
    port: u16,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start(tls: TlsIdentity) -> Farm {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = open_store(&url).await.unwrap();
    let config = CoordinatorConfig {
        tls: Some(tls),
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
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
        port,
        _stop: stop,
        _dir: dir,
    }
}

/// Lists jobs through `addr`, trusting `ca` when given; the error text when it fails.
async fn list_jobs(addr: &str, ca: Option<&std::path::Path>) -> Result<usize, String> {
    let endpoint = sdfarm_proto::tls::endpoint(addr, ca).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    JobServiceClient::new(channel)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .map(|r| r.into_inner().jobs.len())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn only_clients_speaking_tls_to_the_right_ca_get_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let farm = start(TlsIdentity::from_pem(cert, key)).await;

    for host in ["localhost", "127.0.0.1"] {
        let addr = format!("https://{host}:{}", farm.port);
        assert_eq!(list_jobs(&addr, Some(&ca_path)).await, Ok(0), "{addr}");
    }
    // A submit travels over TLS as well.
    let channel =
        sdfarm_proto::tls::endpoint(&format!("https://localhost:{}", farm.port), Some(&ca_path))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let job = JobServiceClient::new(channel)
        .submit(pb::SubmitRequest {
            sweep: "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 1\n".into(),
            owner: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.owner, "alice");

    // Plaintext to a TLS port gets no answer.
    let plain = list_jobs(&format!("http://127.0.0.1:{}", farm.port), None).await;
    assert!(plain.is_err(), "plaintext was answered: {plain:?}");
    // The system's roots do not know the farm's CA.
    let untrusted = list_jobs(&format!("https://localhost:{}", farm.port), None).await;
    assert!(
        untrusted.is_err(),
        "an unknown CA was trusted: {untrusted:?}"
    );
    // Another CA does not vouch for this certificate.
    let (other_ca, _, _) = certificates();
    let other_path = dir.path().join("other-ca.pem");
    std::fs::write(&other_path, other_ca).unwrap();
    let wrong = list_jobs(
        &format!("https://localhost:{}", farm.port),
        Some(&other_path),
    )
    .await;
    assert!(
        wrong.is_err(),
        "a certificate of another CA was accepted: {wrong:?}"
    );
}

#[test]
fn certificate_files_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = certificates();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    assert!(TlsIdentity::load(&cert_path, &key_path).is_ok());

    let missing = dir.path().join("missing.pem");
    let e = TlsIdentity::load(&missing, &key_path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("certificate") && e.contains("missing.pem"),
        "{e}"
    );
    let not_pem = dir.path().join("key.der");
    std::fs::write(&not_pem, [0x30u8, 0x82, 0x01, 0x00]).unwrap();
    let e = TlsIdentity::load(&cert_path, &not_pem)
        .unwrap_err()
        .to_string();
    assert!(e.contains("key") && e.contains("no PEM block"), "{e}");
}
