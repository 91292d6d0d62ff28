//! Who may call what: bearer tokens with roles, checked on every RPC by a tonic interceptor
//! in front of each service. No tokens configured means an open coordinator (the embedded
//! `sdfarm run` on loopback).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sdfarm_proto::auth::{bearer_token, AUTHORIZATION};
use tonic::service::Interceptor;
use tonic::{Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Submits, watches, lists and cancels jobs.
    Client,
    /// Registers, leases and reports tasks.
    Worker,
    /// Everything.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "worker" => Some(Role::Worker),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

/// The gRPC service a call is for; each admits its own roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Jobs,
    Workers,
}

impl Service {
    fn admits(self, role: Role) -> bool {
        matches!(
            (self, role),
            (_, Role::Admin) | (Service::Jobs, Role::Client) | (Service::Workers, Role::Worker)
        )
    }

    fn needs(self) -> &'static str {
        match self {
            Service::Jobs => "a client or admin token",
            Service::Workers => "a worker or admin token",
        }
    }
}

/// Who called, put in the request's extensions for the handlers and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("reading tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens line {line}: {message} (expected `<client|worker|admin> <token> [name]`)")]
    Line { line: usize, message: String },
}

/// The accepted tokens. Empty: every call is let through.
#[derive(Clone, Default)]
pub struct Tokens {
    by_token: Arc<HashMap<String, Caller>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and roles only: the tokens are secrets.
        let mut callers: Vec<_> = self
            .by_token
            .values()
            .map(|c| format!("{}:{}", c.role.as_str(), c.name))
            .collect();
        callers.sort();
        f.debug_struct("Tokens").field("callers", &callers).finish()
    }
}

/// Tokens shorter than this are refused: a guessable token is no protection.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Parses lines of `<role> <token> [name]`; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut by_token = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let err = |message: String| TokensError::Line { line, message };
            let mut fields = content.split_whitespace();
            let (role, token) = (fields.next().unwrap_or(""), fields.next());
            let role =
                Role::parse(role).ok_or_else(|| err(format!("role {role:?} is not known")))?;
            let token = token.ok_or_else(|| err("the token is missing".into()))?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(format!(
                    "the token is {} characters; at least {MIN_TOKEN_LEN} are required",
                    token.len()
                )));
            }
            let name = fields
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}#{line}", role.as_str()));
            if fields.next().is_some() {
                return Err(err("too many fields".into()));
            }
            if by_token
                .insert(token.to_string(), Caller { name, role })
                .is_some()
            {
                return Err(err("the same token appears twice".into()));
            }
        }
        Ok(Tokens {
            by_token: Arc::new(by_token),
        })
    }

    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text)
    }

    pub fn is_open(&self) -> bool {
        self.by_token.is_empty()
    }

    /// The caller a token belongs to. Compares every stored token in full, so the time taken
    /// does not tell how much of a guess was right.
    fn lookup(&self, token: &str) -> Option<&Caller> {
        let mut found = None;
        for (known, caller) in self.by_token.iter() {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(caller);
            }
        }
        found
    }

    /// The interceptor guarding `service`.
    pub fn guard(&self, service: Service) -> Guard {
        Guard {
            tokens: self.clone(),
            service,
        }
    }
}

/// The owner a submitted job is stored under. With tokens, the caller's name: a client
/// cannot submit as someone else (an admin may, by naming the owner). Without tokens the
/// coordinator cannot tell who calls, so the name the client sent is taken as given.
pub fn job_owner(caller: Option<&Caller>, requested: &str) -> String {
    match caller {
        Some(c) if c.role == Role::Admin && !requested.trim().is_empty() => requested.to_string(),
        Some(c) => c.name.clone(),
        None => requested.to_string(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the bearer token of every call to one service.
#[derive(Clone)]
pub struct Guard {
    tokens: Tokens,
    service: Service,
}

impl Guard {
    pub fn check(&self, req: &Request<()>) -> Result<Option<Caller>, Status> {
        if self.tokens.is_open() {
            return Ok(None);
        }
        let header = req
            .metadata()
            .get(AUTHORIZATION)
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "this coordinator needs a token: pass --token or set SDFARM_TOKEN ({})",
                    self.service.needs()
                ))
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
        let token = bearer_token(header)
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let caller = self
            .tokens
            .lookup(token)
            .ok_or_else(|| Status::unauthenticated("the token is not known to this coordinator"))?;
        if !self.service.admits(caller.role) {
            return Err(Status::permission_denied(format!(
                "a {} token cannot call this; it needs {}",
                caller.role.as_str(),
                self.service.needs()
            )));
        }
        Ok(Some(caller.clone()))
    }
}

impl Interceptor for Guard {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(caller) = self.check(&req)? {
            req.extensions_mut().insert(caller);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# farm tokens\nclient cccccccccccccccccccc alice\nworker wwwwwwwwwwwwwwwwwwww\nadmin aaaaaaaaaaaaaaaaaaaa ops # on-call\n";

    fn call(
        tokens: &Tokens,
        service: Service,
        header: Option<&str>,
    ) -> Result<Option<Caller>, Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut().insert(AUTHORIZATION, h.parse().unwrap());
        }
        tokens.guard(service).check(&req)
    }

    #[test]
    fn roles_reach_their_services_only() {
        let t = Tokens::parse(FILE).unwrap();
        let client = Some("Bearer cccccccccccccccccccc");
        let worker = Some("Bearer wwwwwwwwwwwwwwwwwwww");
        let admin = Some("Bearer aaaaaaaaaaaaaaaaaaaa");
        assert_eq!(
            call(&t, Service::Jobs, client).unwrap().unwrap().name,
            "alice"
        );
        assert_eq!(
            call(&t, Service::Workers, worker).unwrap().unwrap().name,
            "worker#3"
        );
        assert_eq!(
            call(&t, Service::Jobs, admin).unwrap().unwrap().role,
            Role::Admin
        );
        assert!(call(&t, Service::Workers, admin).is_ok());
        let denied = call(&t, Service::Workers, client).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let denied = call(&t, Service::Jobs, worker).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        for bad in [
            None,
            Some("Bearer nope-nope-nope-nope"),
            Some("Basic cccccccccccccccccccc"),
        ] {
            let e = call(&t, Service::Jobs, bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn owners_come_from_the_token_when_there_is_one() {
        let alice = Caller {
            name: "alice".into(),
            role: Role::Client,
        };
        let ops = Caller {
            name: "ops".into(),
            role: Role::Admin,
        };
        assert_eq!(job_owner(Some(&alice), "mallory"), "alice");
        assert_eq!(job_owner(Some(&alice), ""), "alice");
        assert_eq!(job_owner(Some(&ops), "bob"), "bob");
        assert_eq!(job_owner(Some(&ops), ""), "ops");
        assert_eq!(job_owner(None, "carol"), "carol");
    }

    #[test]
    fn no_tokens_means_open() {
        let t = Tokens::parse("# nobody yet\n").unwrap();
        assert!(t.is_open());
        assert_eq!(call(&t, Service::Workers, None).unwrap(), None);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e =
            Tokens::parse("client cccccccccccccccccccc\nroot rrrrrrrrrrrrrrrrrrrr\n").unwrap_err();
        assert!(
            e.to_string().contains("line 2") && e.to_string().contains("\"root\""),
            "{e}"
        );
        let e = Tokens::parse("worker short\n").unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        let e = Tokens::parse("worker\n").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let dup = "client cccccccccccccccccccc\nadmin cccccccccccccccccccc\n";
        assert!(Tokens::parse(dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(!format!("{:?}", Tokens::parse(FILE).unwrap()).contains("cccc"));
    }
}
