//! CA files (`tls_ca_file` settings): read and checked in one place, for the
//! configuration's start-up check and the providers' HTTP clients.

/// The certificates in a PEM file (`tls_ca_file`); at least one.
pub fn read_ca_file(path: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{path} is not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(certs)
}
