//! Replays every input of the fuzz corpus (`fuzz/corpus/front_door/`) through
//! the fuzz target's own checks (`fuzz/src/lib.rs`, included below), on stable
//! and without libFuzzer: a regression the fuzzer once covered shows in
//! `cargo test`. Seeds named `valid-*` must be taken on, `invalid-*` refused;
//! inputs the fuzzer added (hash names) only have to pass the checks.

#[path = "../fuzz/src/lib.rs"]
mod front_door_fuzz;

use std::path::PathBuf;

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/front_door");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_passes_the_fuzz_checks() {
    let files = corpus();
    assert!(files.len() >= 40, "the seeds are there: {}", files.len());
    let (mut admitted, mut refused) = (0, 0);
    for (name, data) in &files {
        let verdict = std::panic::catch_unwind(|| front_door_fuzz::check(data))
            .unwrap_or_else(|_| panic!("{name}: the fuzz checks failed (see the panic above)"));
        match (&verdict, name.split('-').next()) {
            (Ok(_), Some("valid")) | (Err(_), Some("invalid")) => {}
            (Ok(a), Some("invalid")) => panic!("{name}: taken on: {:?}", a.request.request_id),
            (Err(e), Some("valid")) => panic!("{name}: refused: {}", e.message),
            _ => {}
        }
        if verdict.is_ok() {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!(
        "{} corpus inputs: {admitted} taken on, {refused} refused",
        files.len()
    );
    // One example per provider and operation of CONTRACT §4 is taken on.
    assert!(admitted >= 4, "{admitted} admitted, {refused} refused");
}

#[test]
fn seeds_cover_each_provider_and_operation_of_the_contract() {
    let mut seen = std::collections::BTreeSet::new();
    for (name, data) in corpus() {
        if name.starts_with("valid-") {
            let a = front_door_fuzz::check(&data).unwrap();
            seen.insert((a.request.provider.as_str(), a.request.operation.as_str()));
        }
    }
    let want: std::collections::BTreeSet<_> = [
        ("computestacks", "onboard"),
        ("magento_bi", "onboard"),
        ("sharespine", "login_url"),
        ("sharespine", "onboard"),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, want);
}

#[test]
fn a_forged_request_id_header_is_never_the_dead_copys_request_id() {
    // The seed whose body has no request_id but whose headers claim one.
    let data = corpus()
        .into_iter()
        .find(|(n, _)| n == "header-forged-request_id-invalid-body")
        .expect("seed present")
        .1;
    let delivery = front_door_fuzz::decode(&data);
    let claimed = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("request_id").cloned());
    assert!(claimed.is_some(), "the seed carries a request_id header");
    let invalid = front_door_fuzz::check_delivery(&delivery).unwrap_err();
    assert_eq!(invalid.request_id, None);
    assert!(invalid.message.contains("request_id is missing"));
}
