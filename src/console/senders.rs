//! The senders page: each number a person may use, with its tier and how much of it the moving
//! 24 h used, quality, status and pace.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::i18n::Text;
use super::page::{self, Shown};
use super::session::Signed;
use crate::api::ApiState;
use crate::store;

pub async fn list(State(state): State<ApiState>, signed: Signed) -> Response {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let services = &state.services;
    let senders = match store::list_senders(&services.pool, &services.derived.keyring).await {
        Ok(all) => all
            .into_iter()
            .filter(|s| signed.caller.may_use_sender(&s.phone_number_id))
            .collect::<Vec<_>>(),
        Err(e) => return Shown::internal(l, e).into_response(),
    };
    let mut rows = Vec::with_capacity(senders.len());
    for sender in senders {
        let (counter, tier) = services.tier_counter(&sender);
        // Redis may be down or rebuilding: the page still shows what PostgreSQL knows.
        let used = services.state.tier_usage(&counter).await.ok();
        rows.push((sender, tier.limit(), used));
    }
    let body = html! {
        main id="main" {
            h1 { (t(Text::Senders)) }
            @if rows.is_empty() {
                p { (t(Text::NoSenders)) }
            } @else {
                div class="table" { table {
                    thead { tr {
                        th scope="col" { (t(Text::Number)) }
                        th scope="col" { (t(Text::Tier)) }
                        th scope="col" { (t(Text::Used24h)) }
                        th scope="col" { (t(Text::Quality)) }
                        th scope="col" { (t(Text::Status)) }
                        th scope="col" { (t(Text::Mps)) }
                    } }
                    tbody { @for (s, limit, used) in &rows {
                        tr {
                            th scope="row" {
                                (s.display_phone_number.as_deref().unwrap_or(&s.phone_number_id))
                                br; small { (s.phone_number_id) }
                            }
                            td { @if *limit < 0 { (t(Text::Unlimited)) } @else { (l.number(*limit)) } }
                            td {
                                @match used {
                                    Some(n) => {
                                        (l.number(*n as i64))
                                        @if *limit > 0 {
                                            " (" (l.percent(*n as f64 / *limit as f64)) ")"
                                        }
                                    }
                                    None => { "—" }
                                }
                            }
                            td { span class={"quality " (s.quality.as_str())} { (s.quality.as_str()) } }
                            td { (s.status.as_str()) @if s.paused { " · " (t(Text::SenderPaused)) } }
                            td { (l.number(i64::from(s.mps))) }
                        }
                    } }
                } }
            }
        }
    };
    page::document(l, t(Text::Senders), Some(&signed), body).into_response()
}
