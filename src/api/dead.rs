//! Dead letters for operators: list, read and send again (`Operate`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::ApiState;
use super::auth::{Authorized, Caller, Operate};
use super::contract::{Endpoint, Page};
use super::error::ApiError;
use crate::dead::{self, DeadError, DeadJobView};
use crate::store::dead::{self as stored, DeadJob};

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::get("/v1/dead", list)
            .needs::<Operate>()
            .tag("dead letters")
            .summary("Jobs that could not be carried out, oldest first")
            .query::<ListQuery>()
            .returns::<Page<DeadJobView>>(200, "a page of dead jobs"),
        Endpoint::get("/v1/dead/{id}", show)
            .path_param::<i64>("id")
            .needs::<Operate>()
            .tag("dead letters")
            .summary("A dead job: its record and the job, decoded where it can be")
            .returns::<DeadJobView>(200, "the dead job"),
        Endpoint::post("/v1/dead/{id}/redrive", redrive)
            .path_param::<i64>("id")
            .needs::<Operate>()
            .tag("dead letters")
            .summary("Send a dead job again")
            .query::<RedriveQuery>()
            .returns::<DeadJobView>(200, "sent again")
            .errors(&[409]),
    ]
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    /// Also those sent again already.
    #[serde(default)]
    all: Option<bool>,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RedriveQuery {
    #[serde(default)]
    force: Option<bool>,
}

impl From<DeadError> for ApiError {
    fn from(e: DeadError) -> ApiError {
        match e {
            DeadError::Refused(r) => r.into(),
            DeadError::App(e) => ApiError::internal(e),
        }
    }
}

/// A page of dead jobs, oldest first; `next_after` continues it.
async fn list(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", None, e.body_text()))?;
    let limit = super::page_limit(q.limit)?;
    let page = stored::list_dead_jobs(
        &state.services.pool,
        q.after.unwrap_or(0),
        limit,
        q.all.unwrap_or(false),
        caller.sender_scope(),
    )
    .await
    .map_err(ApiError::internal)?;
    let next = (page.len() as i64 == limit)
        .then(|| page.last().map(|d| d.id))
        .flatten();
    let data: Vec<_> = page.iter().map(dead::view).collect();
    Ok(Json(Page {
        data,
        next_after: next,
    })
    .into_response())
}

/// The dead job, if this key may see it: one of its senders', or any for a key not limited to
/// some senders.
async fn visible(state: &ApiState, caller: &Caller, id: i64) -> Result<DeadJob, ApiError> {
    stored::get_dead_job(&state.services.pool, id)
        .await
        .map_err(ApiError::internal)?
        .filter(|job| match &job.sender {
            Some(sender) => caller.may_use_sender(sender),
            None => caller.sender_scope().is_none(),
        })
        .ok_or_else(|| ApiError::not_found("unknown_dead_job", format!("no dead job {id}")))
}

async fn show(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let job = visible(&state, &caller, id).await?;
    Ok(Json(dead::view(&job)).into_response())
}

async fn redrive(
    State(state): State<ApiState>,
    caller: Authorized<Operate>,
    Path(id): Path<i64>,
    query: Result<Query<RedriveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_query", None, e.body_text()))?;
    visible(&state, &caller, id).await?;
    let by = caller.actor();
    let job = dead::redrive(&state.services, id, &by, q.force.unwrap_or(false)).await?;
    Ok(Json(dead::view(&job)).into_response())
}
