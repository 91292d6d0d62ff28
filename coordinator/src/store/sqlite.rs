//! SQLite implementation of `Store`.
pub struct SqliteStore;
