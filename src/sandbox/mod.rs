//! The project's emulation of the three provider APIs: real HTTP servers, strict
//! the way the real services are, with knobs for latency and faults and call
//! counts for tests. `onboarding-worker sandbox` serves them; tests and `demo`
//! start them in-process on port 0.

pub mod computestacks;
pub mod faults;
pub mod magento_bi;
pub mod sharespine;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ProvidersSettings, SandboxSettings};

/// What the emulated APIs accept and how they behave.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    pub sharespine: sharespine::Options,
    pub computestacks: computestacks::Options,
    pub magento_bi: magento_bi::Options,
    /// Added to every response of every API.
    pub latency: Duration,
}

impl SandboxOptions {
    /// Accepts exactly the credentials the worker is configured with.
    pub fn from_settings(sandbox: &SandboxSettings, providers: &ProvidersSettings) -> Self {
        let job = Duration::from_millis(sandbox.job_duration_ms);
        SandboxOptions {
            sharespine: sharespine::Options {
                username: providers.sharespine.username.clone(),
                password: providers.sharespine.password.expose().to_string(),
                reseller_code: providers.sharespine.reseller_code.clone(),
            },
            computestacks: computestacks::Options {
                admin_username: providers.computestacks.admin_username.clone(),
                admin_password: providers.computestacks.admin_password.expose().to_string(),
                order_duration: job,
            },
            magento_bi: magento_bi::Options {
                username: providers.magento_bi.username.clone(),
                password: providers.magento_bi.password.expose().to_string(),
                client_id: providers.magento_bi.client_id,
                client_secret: providers.magento_bi.client_secret.expose().to_string(),
                token_ttl: Duration::from_secs(sandbox.token_ttl_s),
                job_duration: job,
            },
            latency: Duration::from_millis(sandbox.latency_ms),
        }
    }
}

/// Where to listen; `127.0.0.1:0` picks a free port.
#[derive(Clone, Debug)]
pub struct Listens {
    pub sharespine: String,
    pub computestacks: String,
    pub magento_api: String,
    pub magento_dashboard: String,
}

impl Listens {
    pub fn from_settings(s: &SandboxSettings) -> Self {
        Listens {
            sharespine: s.sharespine_listen.clone(),
            computestacks: s.computestacks_listen.clone(),
            magento_api: s.magento_api_listen.clone(),
            magento_dashboard: s.magento_dashboard_listen.clone(),
        }
    }
    pub fn ephemeral() -> Self {
        let any = "127.0.0.1:0".to_string();
        Listens {
            sharespine: any.clone(),
            computestacks: any.clone(),
            magento_api: any.clone(),
            magento_dashboard: any,
        }
    }
}

/// The running sandbox: each API's state (for assertions and knobs) and address.
pub struct Sandbox {
    pub sharespine: sharespine::Api,
    pub computestacks: computestacks::Api,
    pub magento_bi: magento_bi::Api,
    pub sharespine_addr: SocketAddr,
    pub computestacks_addr: SocketAddr,
    pub magento_api_addr: SocketAddr,
    pub magento_dashboard_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sandbox {
    /// Binds every listener and starts serving.
    pub async fn start(options: SandboxOptions, listens: Listens) -> std::io::Result<Sandbox> {
        let (stop, stopped) = watch::channel(false);
        let sharespine = sharespine::Api::new(options.sharespine.clone());
        let computestacks = computestacks::Api::new(options.computestacks.clone());
        let magento_bi = magento_bi::Api::new(options.magento_bi.clone());
        for knobs in [&sharespine.knobs, &computestacks.knobs, &magento_bi.knobs] {
            knobs.set_latency(options.latency);
        }
        let mut tasks = Vec::new();
        let sharespine_addr = spawn(
            &listens.sharespine,
            sharespine.router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        let computestacks_addr = spawn(
            &listens.computestacks,
            computestacks.router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        let magento_api_addr = spawn(
            &listens.magento_api,
            magento_bi.api_router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        let magento_dashboard_addr = spawn(
            &listens.magento_dashboard,
            magento_bi.dashboard_router(),
            stopped.clone(),
            &mut tasks,
        )
        .await?;
        Ok(Sandbox {
            sharespine,
            computestacks,
            magento_bi,
            sharespine_addr,
            computestacks_addr,
            magento_api_addr,
            magento_dashboard_addr,
            stop,
            tasks,
        })
    }

    pub fn sharespine_url(&self) -> String {
        format!("http://{}", self.sharespine_addr)
    }
    pub fn computestacks_url(&self) -> String {
        format!("http://{}", self.computestacks_addr)
    }
    pub fn magento_api_url(&self) -> String {
        format!("http://{}", self.magento_api_addr)
    }
    pub fn magento_dashboard_url(&self) -> String {
        format!("http://{}", self.magento_dashboard_addr)
    }

    /// Points `providers` at this sandbox.
    pub fn configure(&self, providers: &mut ProvidersSettings) {
        providers.sharespine.base_url = self.sharespine_url();
        providers.computestacks.base_url = self.computestacks_url();
        providers.magento_bi.api_base = self.magento_api_url();
        providers.magento_bi.dashboard_base = self.magento_dashboard_url();
    }

    /// Stops every listener and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn spawn(
    listen: &str,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error.message = %e, %addr, "sandbox listener failed");
        }
    }));
    Ok(addr)
}
