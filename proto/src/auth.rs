//! Bearer tokens on the wire: the metadata key both sides use and the client-side
//! interceptor that attaches a token to every call.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// gRPC metadata key carrying `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// Adds `authorization: Bearer <token>` to every request; with no token it adds nothing, for
/// a coordinator that runs open (the embedded `sdfarm run`).
#[derive(Clone, Default)]
pub struct Bearer {
    value: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Bearer")
            .field("token", &self.value.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the token contains characters that cannot travel in a gRPC header (printable ASCII only)")]
pub struct InvalidToken;

impl Bearer {
    pub fn new(token: Option<&str>) -> Result<Bearer, InvalidToken> {
        let value = match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| InvalidToken)?,
            ),
        };
        Ok(Bearer { value })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

/// The token of an `authorization: Bearer <token>` value, if it has that shape.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_parse_and_attach() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);

        let mut b = Bearer::new(Some("s3cret")).unwrap();
        let req = b.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get(AUTHORIZATION).unwrap(), "Bearer s3cret");
        let mut open = Bearer::new(None).unwrap();
        assert!(open.call(Request::new(())).unwrap().metadata().is_empty());
        assert!(Bearer::new(Some("bad\ntoken")).is_err());
        assert!(!format!("{b:?}").contains("s3cret"));
    }
}
