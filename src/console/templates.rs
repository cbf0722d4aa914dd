//! The templates page: each registered template with its category, status and quality, and its
//! history of status and category changes (a category change changes the price).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::i18n::Text;
use super::page::{self, Shown, time};
use super::session::Signed;
use crate::api::ApiState;
use crate::store::{self, webhooks::TemplateChangeRow};

/// Changes shown, newest first, across every template.
const CHANGES_SHOWN: i64 = 1000;

pub async fn list(State(state): State<ApiState>, signed: Signed) -> Response {
    let l = signed.locale;
    let t = |text: Text| text.get(l);
    let pool = &state.services.pool;
    let (templates, changes) = match (
        store::list_templates(pool).await,
        store::webhooks::recent_template_changes(pool, CHANGES_SHOWN).await,
    ) {
        (Ok(templates), Ok(changes)) => (templates, changes),
        (Err(e), _) | (_, Err(e)) => return Shown::internal(l, e).into_response(),
    };
    let mut history: BTreeMap<(String, String), Vec<TemplateChangeRow>> = BTreeMap::new();
    for (name, language, change) in changes {
        history.entry((name, language)).or_default().push(change);
    }
    let body = html! {
        main id="main" {
            h1 { (t(Text::Templates)) }
            @if templates.is_empty() {
                p { (t(Text::NoTemplates)) }
            } @else {
                div class="table" { table {
                    thead { tr {
                        th scope="col" { (t(Text::Name)) }
                        th scope="col" { (t(Text::Language)) }
                        th scope="col" { (t(Text::Category)) }
                        th scope="col" { (t(Text::Status)) }
                        th scope="col" { (t(Text::Changes)) }
                    } }
                    tbody { @for tpl in &templates {
                        @let changes = history.get(&(tpl.name.clone(), tpl.language.clone()));
                        tr data-template=(tpl.name) {
                            th scope="row" { (tpl.name) }
                            td { (tpl.language) }
                            td { (tpl.category.as_str()) }
                            td { span class={"status " (tpl.status.as_str())} { (tpl.status.as_str()) } }
                            td {
                                @match changes {
                                    None => { (t(Text::NoChanges)) }
                                    Some(changes) => {
                                        ul class="history" { @for c in changes {
                                            li {
                                                (time(Some(c.created_at))) " · " (c.change) ": "
                                                (c.old_value.as_deref().unwrap_or("—")) " → " strong { (c.new_value) }
                                                @if let Some(reason) = &c.reason { " (" (reason) ")" }
                                            }
                                        } }
                                    }
                                }
                            }
                        }
                    } }
                } }
            }
        }
    };
    page::document(l, t(Text::Templates), Some(&signed), body).into_response()
}
