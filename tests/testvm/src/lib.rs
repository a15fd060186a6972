//! Test VM harness (to be written).
