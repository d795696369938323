//! What every test binary shares: a real RabbitMQ and PostgreSQL set up per
//! test, the sandbox, the worker in-process or as the built binary, and ways to
//! read what they did.
//!
//! - `env`: `TestEnv` (a fresh vhost, a sandbox on port 0, a temporary ledger,
//!   an in-process worker), the tests' settings, log capture, waiting.
//! - `vhost`: a RabbitMQ vhost of a test's own, created and deleted, and what
//!   the management API shows and changes in it.
//! - `management`: the broker's management API client (reqwest).
//! - `pg`: a PostgreSQL database of a test's own; stopping the server.
//! - `prometheus`: `/metrics` text parsed into samples.
//! - `requests`: sample requests and the steps the providers plan for them.
//! - `processes`: worker processes (the built binary), ports, `rabbitmqctl`.
//!
//! Top-level test files take it as `mod support;`; the binaries that are
//! folders (`it/`, `chaos/`, `cluster/`) as `#[path = "../support/mod.rs"] mod
//! support;`, since a folder binary's `mod` lines resolve inside its folder.

// Each test binary compiles all of this and uses a part of it: what one binary
// leaves unused is used by another. This is the one place that says so.
#![allow(dead_code)]

pub mod env;
pub mod management;
pub mod pg;
pub mod processes;
pub mod prometheus;
pub mod requests;
pub mod vhost;

use std::future::Future;

/// Runs `make()`'s future to completion on a thread and runtime of its own:
/// for cleanups in `Drop`, which may run inside a test's runtime (where
/// blocking on another future is not allowed).
pub fn on_own_runtime<F, T>(make: impl FnOnce() -> F + Send + 'static) -> std::thread::Result<T>
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for a cleanup")
            .block_on(make())
    })
    .join()
}
