//! Postgres implementation of `Store`.
pub struct PostgresStore;
