//! (Being written.)

use pollux_core::app::App;

/// Register this crate's subsystem and RPC methods with the app.
pub fn register(_app: &mut App) {}
