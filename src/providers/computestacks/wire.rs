//! ComputeStacks response bodies, as far as the worker reads them (the guide's
//! shapes; every other field is ignored). Serde stays here, at the edge.

use serde::Deserialize;

use crate::config::Secret;

/// `POST /api/admin/users` → `{"user": {"id": ..}}`.
#[derive(Deserialize)]
pub struct UserCreated {
    pub user: Id,
}

#[derive(Deserialize)]
pub struct Id {
    pub id: i64,
}

/// `POST /api/users/{id}/api_credentials` → `{"api_credential": {..}}`.
#[derive(Deserialize)]
pub struct CredentialCreated {
    pub api_credential: Credential,
}

#[derive(Deserialize)]
pub struct Credential {
    pub id: i64,
    pub username: String,
    /// A [`Secret`] from the moment it is read, so no `Debug` can print it.
    pub password: Secret,
}

/// `GET /api/products`.
#[derive(Deserialize)]
pub struct Products {
    pub products: Vec<Product>,
}

#[derive(Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
}

/// `{"order": ...}`, the envelope of both order answers.
#[derive(Deserialize)]
pub struct OrderEnvelope<T> {
    pub order: T,
}

/// `POST /api/orders`.
#[derive(Deserialize)]
pub struct OrderCreated {
    pub id: String,
    /// Public IP of the project's load balancer; the guide shows it always set.
    #[serde(default)]
    pub load_balancer_ip: Option<String>,
}

/// `GET /api/orders/{id}`.
#[derive(Deserialize)]
pub struct OrderState {
    pub status: String,
    /// `null` until the project exists.
    #[serde(default)]
    pub project: Option<Project>,
}

#[derive(Deserialize)]
pub struct Project {
    #[serde(default)]
    pub id: Option<i64>,
}
