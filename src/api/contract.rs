//! The API's published contract. Every route is declared once, as an [`Endpoint`]: its method,
//! path and handler, and what it needs, takes and answers. The router and the OpenAPI 3.1
//! document served at `/v1/openapi.json` are both made from that one list, so the document cannot
//! name a route that is not served, nor miss one that is. Request and response bodies are
//! described by the Rust types the handlers parse and serialise (`schemars`), not by hand.
//!
//! What the list cannot tie to the code by construction (the permission a handler's
//! `Authorized<N>` asks for, the statuses it may answer) is checked from outside: a test calls
//! every endpoint with each role's key, and schemathesis checks every answer against the
//! document.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, MethodRouter, on};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::ApiState;
use super::auth::{Need, Permission, Role};
use super::error::ErrorBody;

/// Makes a schema, registering the types it names with the generator.
type SchemaFn = Arc<dyn Fn(&mut SchemaGenerator) -> Schema + Send + Sync>;

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A valid API key, with this permission (`None`: any role).
    Key(Option<Permission>),
    /// Meta's webhook calls: signed with the app secret, no key.
    Signed,
    /// No credentials: health, metrics and this document.
    Public,
}

/// A body, sent or answered.
#[derive(Clone)]
pub enum Content {
    Json(SchemaFn),
    Csv,
    Text,
    /// No body (204).
    Empty,
}

impl Content {
    /// JSON described by `T`'s schema.
    pub fn json<T: JsonSchema>() -> Content {
        Content::Json(Arc::new(|g| g.subschema_for::<T>()))
    }

    /// JSON described by a schema written where the endpoint is declared, for shapes that are
    /// not a Rust type of their own (a Cloud API message is checked field by field).
    pub fn json_schema(make: fn(&mut SchemaGenerator) -> Schema) -> Content {
        Content::Json(Arc::new(make))
    }
}

/// A request header an endpoint reads.
#[derive(Clone, Copy)]
pub struct HeaderParam {
    pub name: &'static str,
    pub description: &'static str,
    pub required: bool,
}

/// One route: how it is served and how it is described.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    route: MethodRouter<ApiState>,
    pub access: Access,
    summary: &'static str,
    tag: &'static str,
    query: Option<SchemaFn>,
    /// Path parameters that are not plain strings.
    typed_path: Vec<(&'static str, SchemaFn)>,
    headers: Vec<HeaderParam>,
    body: Option<Content>,
    answers: Vec<(StatusCode, &'static str, Content)>,
    errors: Vec<StatusCode>,
}

macro_rules! method_constructors {
    ($($name:ident => $method:ident),*) => {$(
        pub fn $name<H, T>(path: &'static str, handler: H) -> Endpoint
        where
            H: Handler<T, ApiState>,
            T: 'static,
        {
            Endpoint::new(Method::$method, MethodFilter::$method, path, handler)
        }
    )*};
}

impl Endpoint {
    method_constructors!(get => GET, post => POST, put => PUT, delete => DELETE);

    fn new<H, T>(method: Method, filter: MethodFilter, path: &'static str, handler: H) -> Endpoint
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        Endpoint {
            method,
            path,
            route: on(filter, handler),
            access: Access::Key(None),
            summary: "",
            tag: "",
            query: None,
            typed_path: Vec::new(),
            headers: Vec::new(),
            body: None,
            answers: Vec::new(),
            errors: Vec::new(),
        }
    }

    pub fn summary(mut self, summary: &'static str) -> Endpoint {
        self.summary = summary;
        self
    }

    pub fn tag(mut self, tag: &'static str) -> Endpoint {
        self.tag = tag;
        self
    }

    /// Needs a key allowed what `N` needs: the same marker the handler's `Authorized<N>` takes.
    pub fn needs<N: Need>(mut self) -> Endpoint {
        self.access = Access::Key(N::PERMISSION);
        self
    }

    pub fn public(mut self) -> Endpoint {
        self.access = Access::Public;
        self
    }

    pub fn signed(mut self) -> Endpoint {
        self.access = Access::Signed;
        self
    }

    /// Query parameters: the fields of `T`, the struct the handler deserialises them into.
    pub fn query<T: JsonSchema>(mut self) -> Endpoint {
        self.query = Some(Arc::new(|g| T::json_schema(g)));
        self
    }

    /// The path parameter `{name}` is a `T` (a UUID, an integer), as the handler parses it.
    pub fn path_param<T: JsonSchema>(mut self, name: &'static str) -> Endpoint {
        debug_assert!(
            self.path.contains(&format!("{{{name}}}")),
            "{name} in {}",
            self.path
        );
        self.typed_path
            .push((name, Arc::new(|g: &mut SchemaGenerator| T::json_schema(g))));
        self
    }

    /// `{id}` is a UUID.
    pub fn uuid_id(self) -> Endpoint {
        self.path_param::<uuid::Uuid>("id")
    }

    pub fn header(mut self, name: &'static str, description: &'static str) -> Endpoint {
        self.headers.push(HeaderParam {
            name,
            description,
            required: false,
        });
        self
    }

    pub fn body(mut self, content: Content) -> Endpoint {
        self.body = Some(content);
        self
    }

    /// A JSON request body described by `T`, the type the handler parses it into.
    pub fn json_body<T: JsonSchema>(self) -> Endpoint {
        self.body(Content::json::<T>())
    }

    /// A successful answer.
    pub fn answers(mut self, status: u16, description: &'static str, content: Content) -> Endpoint {
        self.answers
            .push((status_code(status), description, content));
        self
    }

    /// A JSON answer described by `T`, the type the handler serialises.
    pub fn returns<T: JsonSchema>(self, status: u16, description: &'static str) -> Endpoint {
        self.answers(status, description, Content::json::<T>())
    }

    /// Refusals beyond those every endpoint of its kind may answer (see [`Endpoint::refusals`]).
    pub fn errors(mut self, statuses: &[u16]) -> Endpoint {
        self.errors
            .extend(statuses.iter().copied().map(status_code));
        self
    }

    /// Wraps the route in a layer (a body limit of its own, say).
    pub fn map_route(
        mut self,
        f: impl FnOnce(MethodRouter<ApiState>) -> MethodRouter<ApiState>,
    ) -> Endpoint {
        self.route = f(self.route);
        self
    }

    fn path_params(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
    }

    /// Every error status the endpoint may answer: what its kind brings (a key: 401, 403 and
    /// 429; input: 400; a path parameter: 404; a body: 413; any: 503 when a backing service is
    /// down or the API is saturated), and the extras it declares.
    pub fn refusals(&self) -> Vec<StatusCode> {
        let mut statuses = vec![StatusCode::SERVICE_UNAVAILABLE];
        if matches!(self.access, Access::Key(_)) {
            statuses.extend([
                StatusCode::UNAUTHORIZED,
                StatusCode::FORBIDDEN,
                StatusCode::TOO_MANY_REQUESTS,
            ]);
        }
        let has_input = self.query.is_some()
            || self.body.is_some()
            || self.path_params().next().is_some()
            || self.headers.iter().any(|h| h.required);
        if has_input {
            statuses.push(StatusCode::BAD_REQUEST);
        }
        if self.path_params().next().is_some() {
            statuses.push(StatusCode::NOT_FOUND);
        }
        if self.body.is_some() {
            statuses.push(StatusCode::PAYLOAD_TOO_LARGE);
        }
        statuses.extend(self.errors.iter().copied());
        statuses.sort();
        statuses.dedup();
        statuses
    }

    /// The roles whose keys may call the endpoint.
    pub fn roles(&self) -> Vec<Role> {
        match self.access {
            Access::Key(None) => Role::ALL.to_vec(),
            Access::Key(Some(p)) => Role::ALL.into_iter().filter(|r| r.allows(p)).collect(),
            Access::Signed | Access::Public => Vec::new(),
        }
    }

    fn operation(&self, g: &mut SchemaGenerator) -> Value {
        let mut parameters: Vec<Value> = self
            .path_params()
            .map(|name| {
                let schema = match self.typed_path.iter().find(|(n, _)| *n == name) {
                    Some((_, schema)) => schema(g).to_value(),
                    None => json!({"type": "string", "minLength": 1}),
                };
                json!({"name": name, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if let Some(query) = &self.query {
            parameters.extend(query_parameters(query(g)));
        }
        parameters.extend(self.headers.iter().map(|h| {
            json!({"name": h.name, "in": "header", "required": h.required,
                   "description": h.description, "schema": {"type": "string"}})
        }));
        let mut responses = Map::new();
        for (status, description, content) in &self.answers {
            responses.insert(
                status.as_u16().to_string(),
                response(description, content, g),
            );
        }
        let error = Content::json::<ErrorBody>();
        for status in self.refusals() {
            let description = status.canonical_reason().unwrap_or("refused");
            responses
                .entry(status.as_u16().to_string())
                .or_insert_with(|| response(description, &error, g));
        }
        let mut op = json!({
            "operationId": operation_id(&self.method, self.path),
            "summary": self.summary,
            "tags": [self.tag],
            "parameters": parameters,
            "responses": responses,
        });
        match self.access {
            Access::Key(permission) => {
                let roles: Vec<&str> = self.roles().iter().map(|r| r.as_str()).collect();
                op["description"] = json!(format!("Roles: {}.", roles.join(", ")));
                op["x-pregon-roles"] = json!(roles);
                op["x-pregon-permission"] = json!(permission.map(Permission::as_str));
            }
            Access::Signed => {
                op["security"] = json!([]);
                op["description"] =
                    json!("Signed by Meta with the app secret (X-Hub-Signature-256); no API key.");
            }
            Access::Public => op["security"] = json!([]),
        }
        if let Some(body) = &self.body {
            op["requestBody"] = json!({"required": true, "content": content(body, g)});
        }
        op
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn operation_id(method: &Method, path: &str) -> String {
    let words: Vec<String> = path
        .split(['/', '.', '-'])
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches(['{', '}']).to_string())
        .collect();
    format!(
        "{}_{}",
        method.as_str().to_ascii_lowercase(),
        words.join("_")
    )
}

fn content(content: &Content, g: &mut SchemaGenerator) -> Value {
    match content {
        Content::Json(schema) => json!({"application/json": {"schema": schema(g)}}),
        Content::Csv => json!({"text/csv": {"schema": {"type": "string"}}}),
        Content::Text => json!({"text/plain": {"schema": {"type": "string"}}}),
        Content::Empty => json!({}),
    }
}

fn response(description: &str, body: &Content, g: &mut SchemaGenerator) -> Value {
    match body {
        Content::Empty => json!({"description": description}),
        other => json!({"description": description, "content": content(other, g)}),
    }
}

/// A query struct's fields as OpenAPI parameters. An optional field is a parameter that may be
/// left out, never one that is sent as `null`.
fn query_parameters(schema: Schema) -> Vec<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            let description = property
                .as_object_mut()
                .and_then(|p| p.remove("description"));
            if let Some(Value::Array(types)) = property.get("type") {
                let types: Vec<Value> = types
                    .iter()
                    .filter(|t| t.as_str() != Some("null"))
                    .cloned()
                    .collect();
                property["type"] = match types.as_slice() {
                    [one] => one.clone(),
                    _ => Value::Array(types),
                };
            }
            let mut parameter = json!({"name": name, "in": "query",
                "required": required.contains(&name.as_str()), "schema": property});
            if let Some(description) = description {
                parameter["description"] = description;
            }
            parameter
        })
        .collect()
}

/// A list answer: `{"data": [...]}`.
#[derive(serde::Serialize, JsonSchema)]
#[schemars(rename = "ListOf{T}")]
pub struct List<T> {
    pub data: Vec<T>,
}

/// A page of a longer list: `next_after` continues it, `null` at the end.
#[derive(serde::Serialize, JsonSchema)]
#[schemars(rename = "PageOf{T}")]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_after: Option<i64>,
}

/// Serves every endpoint of a group.
pub fn mount(endpoints: &[Endpoint]) -> Router<ApiState> {
    endpoints.iter().fold(Router::new(), |router, e| {
        // Two methods on one path are merged by axum into one method router.
        router.route(e.path, e.route.clone())
    })
}

/// The OpenAPI 3.1 document of the endpoints given.
pub fn document(endpoints: &[&Endpoint]) -> Value {
    let mut g = SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas/".into();
        s.meta_schema = None;
    }));
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for e in endpoints {
        let op = e.operation(&mut g);
        paths
            .entry(e.path)
            .or_default()
            .insert(e.method.as_str().to_ascii_lowercase(), op);
    }
    let schemas = g.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pregon",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A WhatsApp Business (Cloud API) dispatcher: enqueue messages shaped \
                like the Cloud API's, run campaigns, manage senders, templates, consent and \
                callbacks. Every refusal is a 4xx with {\"error\": {\"code\", \"field\", \
                \"message\"}}.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "An API key: `Authorization: Bearer pgn_…`."},
            },
        },
        "security": [{"apiKey": []}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn nothing() {}

    #[test]
    fn operation_ids_are_readable_and_distinct_per_method() {
        let cases = [
            (Method::GET, "/v1/campaigns/{id}", "get_v1_campaigns_id"),
            (
                Method::GET,
                "/v1/campaigns/{id}/failures.csv",
                "get_v1_campaigns_id_failures_csv",
            ),
            (
                Method::POST,
                "/v1/campaigns/{id}/retry-failed",
                "post_v1_campaigns_id_retry_failed",
            ),
            (Method::DELETE, "/v1/apikeys/{id}", "delete_v1_apikeys_id"),
        ];
        for (method, path, expected) in cases {
            assert_eq!(operation_id(&method, path), expected, "{path}");
        }
    }

    #[test]
    fn refusals_follow_what_an_endpoint_takes() {
        let keyed_with_path = Endpoint::post("/v1/things/{id}", nothing).errors(&[409]);
        assert_eq!(
            keyed_with_path
                .refusals()
                .iter()
                .map(|s| s.as_u16())
                .collect::<Vec<_>>(),
            vec![400, 401, 403, 404, 409, 429, 503]
        );
        let public = Endpoint::get("/healthz", nothing).public();
        assert_eq!(public.refusals(), vec![StatusCode::SERVICE_UNAVAILABLE]);
    }

    #[test]
    fn optional_query_fields_are_parameters_that_may_be_left_out_not_nulls() {
        #[derive(serde::Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Q {
            /// Rows to skip.
            after: Option<i64>,
            phone: String,
        }
        let mut g = SchemaGenerator::default();
        let params = query_parameters(Q::json_schema(&mut g));
        let after = params.iter().find(|p| p["name"] == "after").unwrap();
        assert_eq!(after["required"], false);
        assert_eq!(after["schema"]["type"], "integer");
        assert_eq!(after["description"], "Rows to skip.");
        let phone = params.iter().find(|p| p["name"] == "phone").unwrap();
        assert_eq!(phone["required"], true);
    }

    fn refs(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    found.push(r.clone());
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }

    #[test]
    fn the_whole_api_is_described_and_every_reference_resolves() {
        let doc = crate::api::openapi(&crate::config::Config::default());
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in &found {
            let name = r.strip_prefix("#/components/schemas/").expect(r);
            assert!(doc["components"]["schemas"].get(name).is_some(), "{r}");
        }
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let what = format!("{method} {path}");
                assert!(!op["summary"].as_str().unwrap().is_empty(), "{what}");
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|s| s.starts_with('2')), "{what}");
                for placeholder in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = placeholder.trim_matches(['{', '}']);
                    assert!(
                        op["parameters"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["name"] == name && p["in"] == "path"),
                        "{what}: {name}"
                    );
                }
            }
        }
        assert!(operations >= 50, "{operations}");
        // Metrics on a listener of their own are not in the API's contract.
        let separate = crate::config::Config {
            metrics_listen: "127.0.0.1:9464".into(),
            ..crate::config::Config::default()
        };
        assert!(
            crate::api::openapi(&separate)["paths"]
                .get("/metrics")
                .is_none()
        );
        assert!(doc["paths"].get("/metrics").is_some());
    }

    #[test]
    fn roles_come_from_the_permission() {
        let operate = Endpoint::post("/v1/senders", nothing).needs::<super::super::auth::Operate>();
        assert_eq!(operate.roles(), vec![Role::Admin]);
        let any = Endpoint::get("/v1/senders", nothing);
        assert_eq!(any.roles().len(), Role::ALL.len());
        let public = Endpoint::get("/healthz", nothing).public();
        assert!(public.roles().is_empty());
    }
}
