//! ARCHITECTURE.md's invariants, checked on the source tree: which module may
//! import what. A line that breaks one fails here with its file and line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Lines of code (not comments) under `src/` that mention `needle`, outside
/// the files and folders `allowed` (paths relative to `src/`).
fn offenders(needle: &str, allowed: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in rust_files(&src) {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        if allowed
            .iter()
            .any(|a| rel == *a || rel.starts_with(&format!("{a}/")))
        {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.contains(needle) {
                found.push(format!("src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn only_the_broker_imports_lapin() {
    let found = offenders("lapin::", &["broker"]);
    assert!(found.is_empty(), "lapin outside src/broker: {found:#?}");
}

#[test]
fn the_engine_never_imports_lapin_reqwest_or_the_providers() {
    let mut found = Vec::new();
    for needle in ["lapin::", "reqwest::", "crate::providers"] {
        found.extend(offenders(
            needle,
            &[
                "broker",
                "providers",
                "ledger",
                "sandbox",
                "config.rs",
                "worker.rs",
                "cli.rs",
                "demo.rs",
                "status.rs",
                "telemetry.rs",
                "metrics.rs",
                "domain.rs",
                "tls.rs",
                "bin",
                "lib.rs",
                "main.rs",
            ],
        ));
    }
    assert!(
        found.is_empty(),
        "the engine reaches past its interfaces: {found:#?}"
    );
}

#[test]
fn providers_never_import_the_broker_or_the_ledger() {
    let mut found = Vec::new();
    for needle in ["crate::broker", "crate::ledger", "lapin::", "sqlx::"] {
        found.extend(
            offenders(needle, &[])
                .into_iter()
                .filter(|l| l.starts_with("src/providers/")),
        );
    }
    assert!(
        found.is_empty(),
        "a provider reaches the broker or ledger: {found:#?}"
    );
}

#[test]
fn anyhow_only_at_the_binary_s_edges() {
    let found = offenders("anyhow", &["cli.rs", "demo.rs", "main.rs"]);
    assert!(found.is_empty(), "anyhow outside the edges: {found:#?}");
}

#[test]
fn the_configuration_does_not_depend_on_the_providers() {
    let found: Vec<String> = offenders("crate::providers", &[])
        .into_iter()
        .filter(|l| l.starts_with("src/config.rs"))
        .collect();
    assert!(
        found.is_empty(),
        "config reaches into providers: {found:#?}"
    );
}

#[test]
fn the_library_ships_no_test_or_bench_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let normal = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] section");
    for test_only in ["tempfile", "proptest"] {
        assert!(
            !normal.lines().any(|l| l.starts_with(test_only)),
            "{test_only} is a normal dependency of the library"
        );
    }
    assert!(
        !root.join("src/bin").exists() && !root.join("src/broker/ceiling.rs").exists(),
        "the bench lives in bench/, not in the library"
    );
    let engine = std::fs::read_to_string(root.join("src/engine/mod.rs")).unwrap();
    assert!(
        engine.contains("#[cfg(test)]\npub mod local;"),
        "engine::local (a plan driver for provider tests) must be test-only"
    );
}
