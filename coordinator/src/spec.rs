//! Sweep files (TOML or JSON) parsed into a validated `SweepSpec`; errors name the key and line.
