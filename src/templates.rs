//! The template registry's sync from the Cloud API: every business account a sender belongs to is
//! listed page by page, and each template is stored with its category, status and the parameter
//! slots its components need (mirrored to Redis for the worker).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::app::{AppError, Services};
use crate::domain::Category;
use crate::domain::campaign::parameter_slots;
use crate::domain::decision::TemplateStatus;
use crate::store::{self, Template};

#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct SyncReport {
    pub accounts: usize,
    pub templates: usize,
    /// Templates by status after the sync.
    pub by_status: BTreeMap<String, usize>,
    /// Accounts that could not be listed, with why.
    pub errors: BTreeMap<String, String>,
}

pub async fn sync(
    services: &Services,
    may_use: impl Fn(&str) -> bool,
) -> Result<SyncReport, AppError> {
    services.catalog.refresh().await?;
    // One token per business account: any of its senders' will do.
    let mut accounts: BTreeMap<String, String> = BTreeMap::new();
    for sender in services
        .catalog
        .senders()
        .into_iter()
        .filter(|s| may_use(&s.phone_number_id))
    {
        if let Some(waba) = &sender.waba_id {
            accounts
                .entry(waba.clone())
                .or_insert_with(|| sender.access_token.clone());
        }
    }
    let mut report = SyncReport {
        accounts: accounts.len(),
        ..SyncReport::default()
    };
    for (waba, token) in accounts {
        let mut after: Option<String> = None;
        loop {
            let (page, next) = match services
                .cloud
                .list_templates(&waba, &token, after.as_deref())
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    report.errors.insert(waba.clone(), e.to_string());
                    break;
                }
            };
            for raw in page {
                let Some(template) = from_listing(&raw) else {
                    continue;
                };
                *report
                    .by_status
                    .entry(template.status.as_str().to_string())
                    .or_default() += 1;
                report.templates += 1;
                let (name, language) = (template.name.clone(), template.language.clone());
                services.register_template(template).await?;
                if let Some(components) = raw.get("components") {
                    store::set_template_components(&services.pool, &name, &language, components)
                        .await?;
                }
            }
            match next {
                Some(cursor) if after.as_deref() != Some(cursor.as_str()) => after = Some(cursor),
                _ => break,
            }
        }
    }
    Ok(report)
}

/// A registry entry from one template of the list endpoint; None when it lacks a name, language
/// or a category pregon knows.
pub fn from_listing(raw: &Value) -> Option<Template> {
    let name = raw.get("name")?.as_str()?.to_string();
    let language = raw.get("language")?.as_str()?.to_string();
    let category = Category::of_template(raw.get("category")?.as_str()?)?;
    let status = TemplateStatus::parse(
        raw.get("status")
            .and_then(Value::as_str)
            .unwrap_or("PENDING"),
    );
    let parameters = raw
        .get("components")
        .map(parameter_slots)
        .unwrap_or_default();
    Some(Template {
        name,
        language,
        category,
        status,
        parameters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listings_become_registry_entries_with_their_parameters() {
        let raw = json!({"name": "promo_nov", "language": "es_MX", "status": "APPROVED",
            "category": "MARKETING", "id": "123",
            "components": [{"type": "BODY", "text": "Hola {{1}}, usa {{2}}"}]});
        let t = from_listing(&raw).unwrap();
        assert_eq!(t.category.as_str(), "marketing");
        assert_eq!(t.parameters, vec!["body.1", "body.2"]);
        assert!(
            from_listing(&json!({"name": "x", "language": "es", "category": "OTHER"})).is_none()
        );
    }
}
