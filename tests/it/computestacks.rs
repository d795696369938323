//! End-to-end tests of the computestacks provider (being written).
