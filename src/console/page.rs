//! The frame every page shares (language, navigation, sign-out, skip link) and the error pages.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::i18n::{Locale, Text};
use super::session::Signed;
use crate::api::error::ApiError;

/// A whole page: `signed` adds the navigation and the sign-out forms.
pub fn document(
    locale: Locale,
    title: &str,
    signed: Option<&Signed>,
    main: Markup,
) -> Html<String> {
    let t = |text: Text| text.get(locale);
    Html(
        html! {
            (DOCTYPE)
            html lang=(locale.tag()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · pregon" }
                    link rel="stylesheet" href="/console/assets/console.css";
                    script src="/console/assets/console.js" defer {}
                }
                body {
                    a class="skip" href="#main" { (t(Text::SkipToContent)) }
                    header {
                        nav aria-label=(t(Text::Console)) {
                            a class="brand" href="/console/campaigns" { "pregon" }
                            @if signed.is_some() {
                                a href="/console/campaigns" { (t(Text::Campaigns)) }
                                a href="/console/contacts" { (t(Text::Contacts)) }
                                a href="/console/senders" { (t(Text::Senders)) }
                                a href="/console/templates" { (t(Text::Templates)) }
                            }
                        }
                        div class="tools" {
                            (language_switch(locale))
                            @if let Some(s) = signed {
                                span class="who" { (t(Text::SignedInAs)) " " (s.email) " (" (s.caller.role.as_str()) ")" }
                                form method="post" action="/console/logout" {
                                    (csrf(s))
                                    button type="submit" class="link" { (t(Text::SignOut)) }
                                }
                                form method="post" action="/console/logout-everywhere" {
                                    (csrf(s))
                                    button type="submit" class="link" { (t(Text::SignOutEverywhere)) }
                                }
                            }
                        }
                    }
                    (main)
                }
            }
        }
        .into_string(),
    )
}

fn language_switch(locale: Locale) -> Markup {
    html! {
        form method="post" action="/console/language" class="language" {
            input type="hidden" name="back" value="" data-back;
            label for="language" { (Text::Language.get(locale)) }
            select id="language" name="language" data-autosubmit {
                @for l in Locale::ALL {
                    option value=(l.tag()) selected[l == locale] { (l.name()) }
                }
            }
            button type="submit" { (Text::Change.get(locale)) }
        }
    }
}

/// The hidden field every form of a signed-in page carries.
pub fn csrf(signed: &Signed) -> Markup {
    html! { input type="hidden" name="_csrf" value=(signed.csrf); }
}

/// A moment, written in UTC for a page without script and rewritten by the script in the
/// reader's own time zone and language.
pub fn time(at: Option<DateTime<Utc>>) -> Markup {
    html! {
        @if let Some(at) = at {
            time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M UTC")) }
        } @else {
            "—"
        }
    }
}

/// A page that says what went wrong, with the status the API would have answered.
pub struct Shown {
    locale: Locale,
    status: StatusCode,
    headline: &'static str,
    detail: String,
}

impl Shown {
    pub fn text(locale: Locale, status: StatusCode, text: Text) -> Shown {
        Shown {
            locale,
            status,
            headline: text.get(locale),
            detail: String::new(),
        }
    }

    pub fn status(locale: Locale, status: StatusCode, detail: &str) -> Shown {
        Shown {
            locale,
            status,
            headline: status.canonical_reason().unwrap_or("Error"),
            detail: detail.to_string(),
        }
    }

    pub fn internal(locale: Locale, error: impl std::fmt::Display) -> Shown {
        tracing::error!(error = %error, "console page failed");
        Shown::status(locale, StatusCode::INTERNAL_SERVER_ERROR, "")
    }

    /// The API's refusal, on a page: the same status, a headline in the reader's language and
    /// the API's own message beneath it.
    pub fn api(locale: Locale, error: ApiError) -> Shown {
        let headline = match error.status {
            StatusCode::FORBIDDEN => Text::Forbidden.get(locale),
            StatusCode::NOT_FOUND => Text::NotFound.get(locale),
            s => s.canonical_reason().unwrap_or("Error"),
        };
        if error.status.is_server_error() {
            tracing::error!(error = %error.message, "console page failed");
        }
        Shown {
            locale,
            status: error.status,
            headline,
            detail: if error.status.is_server_error() {
                String::new()
            } else {
                error.message
            },
        }
    }
}

impl IntoResponse for Shown {
    fn into_response(self) -> Response {
        let body = html! {
            main id="main" class="narrow" {
                h1 { (self.headline) }
                @if !self.detail.is_empty() { p { (self.detail) } }
                p { a href="/console/campaigns" { (Text::Back.get(self.locale)) } }
            }
        };
        (
            self.status,
            document(self.locale, self.headline, None, body),
        )
            .into_response()
    }
}
