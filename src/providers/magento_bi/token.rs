//! The Magento BI access token: one per provider instance, shared by every
//! onboarding it runs, obtained with the configured credentials
//! (`POST {api_base}/v1/tokens`, `grant_type: password`) and renewed before
//! `expires_in` runs out or after the provider answers 401.
//!
//! The token, the password and the client secret live in [`Secret`]s and leave
//! this module only as request headers marked sensitive.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{MagentoBiSettings, Secret};
use crate::domain::RetryReason;
use crate::engine::step::StepError;
use crate::metrics::Metrics;
use crate::providers::http::HttpClient;

/// A token in hand.
#[derive(Clone)]
pub(super) struct Token {
    value: Secret,
    /// Which token this is (1, 2, ...), so a 401 renews only the token it saw.
    generation: u64,
    expires_at: Instant,
    /// How long before `expires_at` it is replaced: the configured margin, but
    /// never more than half the token's lifetime (a margin longer than the
    /// lifetime would make every call fetch a token of its own).
    margin: Duration,
}

impl Token {
    /// `Authorization: Bearer <token>`, marked sensitive so no Debug prints it.
    pub(super) fn bearer(&self) -> HeaderValue {
        sensitive(&format!("Bearer {}", self.value.expose()))
    }
    /// `Cookie: DASHSESS2=<token>`, marked sensitive as well.
    pub(super) fn cookie(&self) -> HeaderValue {
        sensitive(&format!("DASHSESS2={}", self.value.expose()))
    }
    fn fresh(&self) -> bool {
        self.expires_at.saturating_duration_since(Instant::now()) > self.margin
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &self.value)
            .field("generation", &self.generation)
            .field(
                "expires_in",
                &self.expires_at.saturating_duration_since(Instant::now()),
            )
            .field("margin", &self.margin)
            .finish()
    }
}

fn sensitive(text: &str) -> HeaderValue {
    // `fetch` only keeps tokens that are valid header text, so this cannot fail;
    // an empty value (a 401 at worst) is still better than a panic.
    let mut v = HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// The part of the token answer we use; the rest of the seed's fields are ignored.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Secret,
    /// Seconds, as a number (seed) or numeric text; absent or null is read as
    /// [`UNSAID_LIFETIME`] (module doc, point 18).
    #[serde(default)]
    expires_in: serde_json::Value,
}

/// The lifetime assumed for a token whose answer does not say; a 401 renews
/// it sooner if it is shorter.
const UNSAID_LIFETIME: Duration = Duration::from_secs(3600);

/// Hands out the shared token, renewing it at most once at a time.
pub(super) struct Tokens {
    http: HttpClient,
    api_base: String,
    username: String,
    password: Secret,
    client_id: i64,
    client_secret: Secret,
    margin: Duration,
    metrics: Metrics,
    /// Held across a renewal, so concurrent steps wait for one new token
    /// instead of each asking for its own.
    slot: Mutex<Option<Token>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.slot.try_lock().ok().and_then(|t| t.clone());
        f.debug_struct("Tokens")
            .field("api_base", &self.api_base)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("margin", &self.margin)
            .field("current", &current)
            .finish()
    }
}

impl Tokens {
    pub(super) fn new(settings: &MagentoBiSettings, http: HttpClient, metrics: Metrics) -> Self {
        Tokens {
            http,
            api_base: settings.api_base.clone(),
            username: settings.username.clone(),
            password: settings.password.clone(),
            client_id: settings.client_id,
            client_secret: settings.client_secret.clone(),
            margin: Duration::from_millis(settings.token_renew_margin_ms),
            metrics,
            slot: Mutex::new(None),
        }
    }

    /// The current token, or a new one when none is held or less than the
    /// margin of it remains.
    pub(super) async fn get(&self, step: &str) -> Result<Token, StepError> {
        let mut slot = self.slot.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| t.fresh()) {
            return Ok(t.clone());
        }
        let generation = slot.as_ref().map_or(0, |t| t.generation) + 1;
        let token = self.fetch(step, generation).await?;
        *slot = Some(token.clone());
        Ok(token)
    }

    /// A new token after `rejected` was answered 401, unless another step has
    /// already replaced it (then that newer one).
    pub(super) async fn renew(&self, step: &str, rejected: &Token) -> Result<Token, StepError> {
        let mut slot = self.slot.lock().await;
        if let Some(t) = slot
            .as_ref()
            .filter(|t| t.generation != rejected.generation && t.fresh())
        {
            return Ok(t.clone());
        }
        let generation = slot.as_ref().map_or(0, |t| t.generation) + 1;
        let token = self.fetch(step, generation).await?;
        *slot = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self, step: &str, generation: u64) -> Result<Token, StepError> {
        let url = super::calls::endpoint(&self.api_base, "api_base", &["v1", "tokens"])?;
        let body = json!({
            "username": self.username,
            "password": self.password.expose(),
            "grant_type": "password",
            "scope": "default",
            "clientId": self.client_id,
            "clientSecret": self.client_secret.expose(),
        });
        // Measured from before the call, so the token is never thought to live longer than it does.
        let asked_at = Instant::now();
        let request = self.http.inner().post(url).json(&body);
        // Counted and classified under the step's name: the token is part of that step's work.
        let answer: TokenAnswer = self
            .http
            .send(step, request)
            .await
            .and_then(|r| r.json(step))
            .map_err(|e| about_token(step, e))?;
        let usable = !answer.access_token.expose().is_empty()
            && HeaderValue::from_str(answer.access_token.expose()).is_ok();
        let expires_in = super::answers::seconds(&answer.expires_in);
        let readable = match expires_in {
            Ok(None) => true,
            Ok(Some(secs)) => secs.is_finite(),
            Err(_) => false,
        };
        if !usable || !readable {
            return Err(StepError::Transient {
                reason: RetryReason::BadResponse,
                retry_after: None,
                http_status: Some(200),
                message: format!("{step} (access token): the provider sent an unusable token"),
            });
        }
        let lifetime = match expires_in {
            Ok(Some(secs)) => Duration::from_secs_f64(secs.clamp(0.0, 1e9)),
            _ => UNSAID_LIFETIME,
        };
        self.metrics
            .token_renewals_total
            .with_label_values(&["magento_bi"])
            .inc();
        tracing::info!(
            provider = "magento_bi",
            step,
            generation,
            expires_in_s = lifetime.as_secs(),
            "new access token"
        );
        Ok(Token {
            value: answer.access_token,
            generation,
            expires_at: asked_at + lifetime,
            margin: self.margin.min(lifetime / 2),
        })
    }
}

/// Keeps the class of a token call's failure (a transient one stays transient
/// for the step that needed the token) and says it was the token call.
fn about_token(step: &str, e: StepError) -> StepError {
    let mark = |m: String| m.replacen(step, &format!("{step} (access token)"), 1);
    match e {
        StepError::Transient {
            reason,
            retry_after,
            http_status,
            message,
        } => StepError::Transient {
            reason,
            retry_after,
            http_status,
            message: mark(message),
        },
        StepError::Rejected {
            http_status,
            message,
        } => StepError::Rejected {
            http_status,
            message: mark(message),
        },
        StepError::JobFailed { message } => StepError::JobFailed {
            message: mark(message),
        },
    }
}
