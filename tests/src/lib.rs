//! Harness for sdfarm's end-to-end tests: the real `sdfarm` binary run as separate
//! processes, a fresh Postgres database per test, and an S3-compatible server (moto) on
//! loopback.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;

/// The shared reference kit, if this checkout has it beside it.
pub fn reference_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SDFARM_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"));
    dir.join("tiny-sd/diffusers/model_index.json")
        .exists()
        .then_some(dir)
}

/// The model the end-to-end sweeps render: the reference tiny-sd folder when present,
/// otherwise the tiny model sdfarm builds itself.
pub fn test_model() -> String {
    match reference_dir() {
        Some(dir) => std::fs::canonicalize(dir.join("tiny-sd/diffusers"))
            .expect("reference model path")
            .display()
            .to_string(),
        None => {
            eprintln!("../shared/reference not found: using the built-in tiny model instead");
            "builtin:tiny-sd".to_string()
        }
    }
}

/// The `sdfarm` binary of this build (built by `cargo test --workspace` along with the CLI's
/// own tests); built on demand when a single package's tests are run.
pub fn sdfarm_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/sdfarm
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join(format!("sdfarm{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "sdfarm-cli", "--bin", "sdfarm"])
            .status()
            .expect("running cargo build for the sdfarm binary");
        assert!(status.success(), "building the sdfarm binary failed");
    }
    bin
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "{what} did not start listening on 127.0.0.1:{port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed when the test ends, however it ends.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    /// SIGKILL: the process gets no chance to clean up, as when a machine dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres database created for one test and dropped after it.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

pub fn admin_database_url() -> String {
    std::env::var("SDFARM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    pub async fn create() -> TestDb {
        use sqlx::Connection;
        let admin_url = admin_database_url();
        let name = format!("sdfarm_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("Postgres at {admin_url} is needed for this test: {e}"));
        // The name is generated here (a UUID), never user input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(&admin_url);
        TestDb {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee: use a private one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// Bucket creation is not part of object_store's API; moto accepts a plain PUT.
fn create_bucket(port: u16, bucket: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

/// moto's S3-compatible server on a loopback port, with one bucket.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    _proc: Proc,
}

impl S3Server {
    /// Starts moto and creates the bucket. Ports are picked free but handed to a child that
    /// binds them later, so under parallel tests another process can take one first: then
    /// the bucket request gets no answer from moto, and the server is started again on
    /// another port.
    pub fn start() -> S3Server {
        let bin = std::env::var("SDFARM_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let bucket = "sdfarm-test".to_string();
        let mut last_reply = String::new();
        for _ in 0..3 {
            let port = free_port();
            let proc = Proc::spawn(
                "moto_server",
                Command::new(&bin)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            );
            wait_for_port(
                port,
                "moto_server (pip install 'moto[server]')",
                Duration::from_secs(60),
            );
            for _ in 0..10 {
                last_reply = create_bucket(port, &bucket);
                if last_reply.starts_with("HTTP/1.1 200") {
                    return S3Server {
                        endpoint: format!("http://127.0.0.1:{port}"),
                        bucket,
                        _proc: proc,
                    };
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        panic!("creating the test bucket in moto failed three times; last reply: {last_reply:?}");
    }

    /// Environment a process needs to reach this server through object_store's S3 client.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "sdfarm".into()),
            ("AWS_SECRET_ACCESS_KEY", "sdfarm-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    pub fn store(&self) -> impl ObjectStore {
        AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_access_key_id("sdfarm")
            .with_secret_access_key("sdfarm-secret")
            .with_region("us-east-1")
            .build()
            .expect("S3 client for the test server")
    }
}

/// Runs `sdfarm` to completion and returns its stdout; panics with stderr on failure.
pub fn sdfarm_ok(args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new(sdfarm_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("running sdfarm");
    assert!(
        out.status.success(),
        "sdfarm {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
