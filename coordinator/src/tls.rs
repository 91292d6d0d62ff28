//! Serving gRPC over TLS: the coordinator's certificate chain and private key, read once at
//! start-up so a missing or unreadable file is reported before anything listens.

use std::path::Path;

use tonic::transport::{Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the TLS {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the TLS {what} {path} holds no PEM block (expected {expected})")]
    NotPem {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
}

/// A PEM certificate chain and its PEM private key.
#[derive(Clone)]
pub struct TlsIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsIdentity")
            .field("cert_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    pub fn from_pem(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> TlsIdentity {
        TlsIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    /// Reads `cert` (the certificate, then any intermediates) and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let cert_pem = read_pem(cert, "certificate", "-----BEGIN CERTIFICATE-----")?;
        let key_pem = read_pem(
            key,
            "key",
            "-----BEGIN PRIVATE KEY----- or another key block",
        )?;
        Ok(TlsIdentity { cert_pem, key_pem })
    }

    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn read_pem(path: &Path, what: &'static str, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            what,
            path: path.display().to_string(),
            expected,
        });
    }
    Ok(bytes)
}
