//! Helpers for the real-kernel integration tests.
