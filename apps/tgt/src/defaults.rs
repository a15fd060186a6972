//! The embedded default configuration: what `pollux-tgt --default-config`
//! serves with no config file of its own.

/// SPDK-format JSON config.
pub const CONFIG: &str = include_str!("default-config.json");

/// The name messages use for it.
pub const NAME: &str = "<embedded default config>";
