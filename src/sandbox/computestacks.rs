//! Emulated computestacks API (placeholder until its module lands).
use super::faults::Knobs;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Options {
    pub admin_username: String,
    pub admin_password: String,
    pub order_duration: Duration,
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
    pub fn router(&self) -> axum::Router {
        let _ = Duration::ZERO;
        super::faults::control_routes(self.knobs.clone())
    }
}
