//! Emulated Magento BI API (placeholder until its module lands).
use super::faults::Knobs;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Options {
    pub username: String,
    pub password: String,
    pub client_id: i64,
    pub client_secret: String,
    pub token_ttl: Duration,
    pub job_duration: Duration,
}

#[derive(Clone)]
pub struct Api {
    pub knobs: Knobs,
    #[allow(dead_code)]
    options: Options,
}

impl Api {
    pub fn new(options: Options) -> Self {
        Api {
            knobs: Knobs::default(),
            options,
        }
    }
    pub fn api_router(&self) -> axum::Router {
        super::faults::control_routes(self.knobs.clone())
    }
    pub fn dashboard_router(&self) -> axum::Router {
        axum::Router::new()
    }
}
