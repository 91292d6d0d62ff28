//! How clients reach a coordinator: plain `http://`, or TLS for `https://` addresses, trusting
//! either a given CA certificate (a private farm's own CA) or the system's roots.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "coordinator address {0:?} is not a URL (expected http://host:port or https://host:port)"
    )]
    Address(String),
    #[error("reading the CA certificate {path}: {source}")]
    ReadCa {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "a CA certificate was given but the coordinator address {0:?} is plain http://; \
         use https:// to connect with TLS"
    )]
    CaWithoutHttps(String),
    #[error("TLS settings for {addr}: {source}")]
    Tls {
        addr: String,
        source: tonic::transport::Error,
    },
}

/// The endpoint for `addr`. `https://` connects with TLS, verifying the coordinator's
/// certificate against `ca` (a PEM file) when given, else against the system's roots; a CA
/// with an `http://` address is refused rather than silently ignored.
pub fn endpoint(addr: &str, ca: Option<&Path>) -> Result<Endpoint, EndpointError> {
    let endpoint = Endpoint::from_shared(addr.to_string())
        .map_err(|_| EndpointError::Address(addr.to_string()))?;
    let https = endpoint.uri().scheme_str() == Some("https");
    let tls = match (ca, https) {
        (Some(path), true) => {
            let pem = std::fs::read(path).map_err(|source| EndpointError::ReadCa {
                path: path.display().to_string(),
                source,
            })?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
        (Some(_), false) => return Err(EndpointError::CaWithoutHttps(addr.to_string())),
        (None, true) => ClientTlsConfig::new().with_native_roots(),
        (None, false) => return Ok(endpoint),
    };
    endpoint
        .tls_config(tls)
        .map_err(|source| EndpointError::Tls {
            addr: addr.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_cas_are_checked_before_connecting() {
        assert!(endpoint("http://127.0.0.1:7070", None).is_ok());
        assert!(endpoint("https://farm.example:7070", None).is_ok());
        let e = endpoint("not a url", None).unwrap_err().to_string();
        assert!(e.contains("\"not a url\""), "{e}");
        let dir = std::env::temp_dir();
        let e = endpoint("http://127.0.0.1:7070", Some(&dir))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use https://"), "{e}");
        let missing = dir.join("sdfarm-no-such-ca.pem");
        let e = endpoint("https://127.0.0.1:7070", Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sdfarm-no-such-ca.pem"), "{e}");
    }
}
