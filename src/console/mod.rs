//! The console: server-rendered pages under `/console` for people (marketing, viewers, admins),
//! beside the HTTP API for systems. It signs people in with a password and a session cookie and
//! turns them into the same [`Caller`] an API key becomes, so roles and sender limits mean the
//! same thing; every action calls the same use cases as the API (`crate::campaigns`), never a
//! second path. Pages are plain HTML that works without JavaScript; one small script (served
//! from the binary, like the stylesheet) keeps a running campaign's page live and formats times
//! in the reader's time zone.

mod campaigns;
mod contacts;
pub mod i18n;
mod new_campaign;
mod page;
mod senders;
mod session;
mod templates;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::ApiState;

pub use session::{create_user, generate_password};

const STYLESHEET: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// The console's routes, and `/` sending a browser to it.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(
            "/console",
            get(|| async { Redirect::to("/console/campaigns") }),
        )
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .route(
            "/console/login",
            get(session::login_page).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route(
            "/console/logout-everywhere",
            post(session::logout_everywhere),
        )
        .route("/console/language", post(session::set_language))
        .route("/console/campaigns", get(campaigns::list))
        .route(
            "/console/campaigns/new",
            get(new_campaign::start).post(new_campaign::submit),
        )
        .route("/console/campaigns/new/details", get(new_campaign::details))
        .route("/console/campaigns/{id}", get(campaigns::show))
        .route("/console/campaigns/{id}/live", get(campaigns::live))
        .route(
            "/console/campaigns/{id}/failures.csv",
            get(campaigns::failures_csv),
        )
        .route(
            "/console/campaigns/{id}/exclusions.csv",
            get(campaigns::exclusions_csv),
        )
        .route("/console/campaigns/{id}/{action}", post(campaigns::act))
        .route("/console/senders", get(senders::list))
        .route("/console/templates", get(templates::list))
        .route("/console/contacts", get(contacts::search))
        .route("/console/contacts/{phone}", get(contacts::contact))
        .route(
            "/console/contacts/{phone}/consent",
            post(contacts::record_consent),
        )
        .route(
            "/console/contacts/{phone}/lift-suppression",
            post(contacts::lift_suppression),
        )
        .route(
            "/console/contacts/import",
            get(contacts::upload_page)
                .post(contacts::upload)
                .layer(DefaultBodyLimit::max(contacts::UPLOAD_LIMIT)),
        )
        .route(
            "/console/contacts/import/{id}",
            get(contacts::mapping_page).post(contacts::import),
        )
        .route(
            "/console/contacts/imports/{id}/errors.csv",
            get(contacts::errors_csv),
        )
}

/// Assets are part of the binary: nothing is loaded from outside (the machines running pregon
/// may have no internet).
async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
