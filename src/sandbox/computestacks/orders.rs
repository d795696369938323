//! The catalogue and orders: `GET /api/products`, `POST /api/orders`,
//! `GET /api/orders/{id}` and `GET /api/orders`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::checks::{authenticate, json_body, non_blank, param, ApiError};
use super::readings::{Envelope, LoadBalancerIp, OrderIds, Readings, Shown};
use super::{advance, Caller, Order, OrderRecord, Shared};

/// The one location of the sandbox, as in the guide's example.
const LOCATION_ID: i64 = 1;
const LOCATION_NAME: &str = "demo";

fn now_rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The catalogue: (id, name, cpu, memory MB, storage GB, price per hour).
const PRODUCTS: [(i64, &str, &str, u32, u32, &str); 3] = [
    (1, "small", "1.0", 256, 5, "0.0"),
    (2, "medium", "2.0", 1024, 20, "0.01"),
    (3, "large", "4.0", 4096, 80, "0.04"),
];

/// GET /api/products
pub(super) async fn list_products(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = state.lock().unwrap();
    authenticate(&s, &headers)?;
    let r = &s.options.readings;
    let products: Vec<Map<String, Value>> = PRODUCTS
        .iter()
        .map(|(id, name, cpu, memory, storage, price)| {
            let mut product = json!({
                "name": name, "price": price, "term": "hour",
                "cpu": cpu, "memory": memory, "storage": storage, "bandwidth": 100,
                "backup": 0, "local_disk": storage, "memory_swap": null,
                "memory_swappiness": null, "region": 1,
            });
            let product = product.as_object_mut().expect("an object");
            product.insert("id".into(), r.id(*id));
            std::mem::take(product)
        })
        .collect();
    Ok(Json(r.list(r.products, "products", products)).into_response())
}

/// POST /api/orders
pub(super) async fn create_order(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    let Caller::User(user_id) = authenticate(&s, &headers)? else {
        // Orders belong to the customer: they are placed with the customer's credential.
        return Err(ApiError::forbidden());
    };
    let params = json_body(&headers, &body)?;
    let order = param(&params, "order")?;

    let mut errors = Vec::new();
    let location_id = match order.get("location_id") {
        None | Some(Value::Null) => LOCATION_ID,
        Some(v) => v.as_i64().unwrap_or(-1),
    };
    if location_id != LOCATION_ID {
        errors.push("Location not found".to_string());
    }
    let containers = order
        .get("containers")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty());
    let mut product_ids = Vec::new();
    match containers {
        None => errors.push("Containers can't be blank".to_string()),
        Some(containers) => {
            for (i, container) in containers.iter().enumerate() {
                // The real API knows products by id only; names are the worker's to resolve.
                let product_id = container
                    .get("resources")
                    .and_then(|r| r.get("product_id"))
                    .and_then(Value::as_i64);
                match product_id {
                    None => errors.push(format!("Container {}: product can't be blank", i + 1)),
                    Some(id) if !PRODUCTS.iter().any(|p| p.0 == id) => {
                        errors.push(format!("Container {}: product {id} not found", i + 1))
                    }
                    Some(id) => product_ids.push(id),
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }

    let number = s.orders.len() + 1;
    let project_name = non_blank(order, "project_name")
        .map(str::to_string)
        .unwrap_or_else(|| format!("Project {number}"));
    let will_fail = if s.fail_next > 0 {
        s.fail_next -= 1;
        true
    } else {
        s.fail_projects.contains(&project_name)
    };
    let now = OffsetDateTime::now_utc();
    let id = match s.options.readings.order_ids {
        OrderIds::Uuid => uuid::Uuid::new_v4().to_string(),
        OrderIds::Number | OrderIds::NumericString => (1000 + number).to_string(),
    };
    let record = OrderRecord {
        id,
        user_id,
        status: "pending".to_string(),
        project_id: None,
        project_name,
        product_ids,
        load_balancer_ip: format!("198.51.100.{}", (number - 1) % 254 + 1),
    };
    let answer = {
        let r = &s.options.readings;
        let mut view = Map::new();
        view.insert("id".into(), r.order_id(&record.id));
        r.unknown(&mut view, "redirect_url");
        match r.load_balancer_ip {
            LoadBalancerIp::AtCreate => {
                view.insert("load_balancer_ip".into(), json!(record.load_balancer_ip));
            }
            LoadBalancerIp::Nested => {
                view.insert(
                    "load_balancer".into(),
                    json!({ "ip": record.load_balancer_ip }),
                );
            }
            LoadBalancerIp::Late | LoadBalancerIp::Nowhere => {
                r.unknown(&mut view, "load_balancer_ip")
            }
        }
        r.object(r.order_created, "order", view)
    };
    let duration = s.options.order_duration;
    s.orders.push(Order {
        record,
        location_id,
        order_data: Value::Object(order.clone()),
        created_at: now,
        updated_at: now,
        placed: Instant::now(),
        duration,
        will_fail,
    });
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// GET /api/orders/{id}
pub(super) async fn show_order(
    State(state): State<Shared>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    let caller = authenticate(&s, &headers)?;
    let s = &mut *s;
    let order = s
        .orders
        .iter_mut()
        .find(|o| o.record.id == order_id && caller == Caller::User(o.record.user_id))
        .ok_or_else(ApiError::not_found)?;
    advance(order, &mut s.next_project_id);
    let r = &s.options.readings;
    let view = order_view(order, r, true);
    let answer = match r.order_shown {
        Shown::Named => r.object(Envelope::Named, "order", view),
        Shown::Bare => r.object(Envelope::Bare, "order", view),
        Shown::List => r.list(r.orders, "orders", vec![view]),
    };
    Ok(Json(answer).into_response())
}

/// An order as `GET /api/orders/{id}` (`whole`) or `GET /api/orders` shows it.
fn order_view(order: &Order, r: &Readings, whole: bool) -> Map<String, Value> {
    let mut view = Map::new();
    view.insert("id".into(), r.order_id(&order.record.id));
    view.insert("status".into(), json!(r.status(&order.record.status)));
    if whole {
        // The provider keeps the IP in the order's data, shown as `order_data`.
        let mut data = order.order_data.clone();
        let shown = match r.load_balancer_ip {
            LoadBalancerIp::AtCreate | LoadBalancerIp::Nested => true,
            LoadBalancerIp::Late => order.record.status == "completed",
            LoadBalancerIp::Nowhere => false,
        };
        if let (true, Some(data)) = (shown, data.as_object_mut()) {
            data.insert(
                "load_balancer_ip".into(),
                json!(order.record.load_balancer_ip),
            );
        }
        view.insert("order_data".into(), data);
    }
    view.insert("created_at".into(), json!(now_rfc3339(order.created_at)));
    view.insert("updated_at".into(), json!(now_rfc3339(order.updated_at)));
    let project = order
        .record
        .project_id
        .map(|id| json!({ "id": r.id(id), "name": order.record.project_name }));
    r.maybe(&mut view, "project", project);
    if whole {
        let location = (order.location_id == LOCATION_ID)
            .then(|| json!({ "id": LOCATION_ID, "name": LOCATION_NAME }));
        r.maybe(&mut view, "location", location);
    }
    view
}

/// GET /api/orders: the caller's own orders (none for the admin).
pub(super) async fn list_orders(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut s = state.lock().unwrap();
    let caller = authenticate(&s, &headers)?;
    let s = &mut *s;
    let mut items = Vec::new();
    for order in s
        .orders
        .iter_mut()
        .filter(|o| caller == Caller::User(o.record.user_id))
    {
        advance(order, &mut s.next_project_id);
        items.push(order_view(order, &s.options.readings, false));
    }
    let r = &s.options.readings;
    Ok(Json(r.list(r.orders, "orders", items)).into_response())
}
