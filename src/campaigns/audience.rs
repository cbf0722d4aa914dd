//! Who a campaign goes to: the audience definition and reading it page by page, in a stable
//! order, from contacts (tags, attributes, a list) or an explicit list of numbers.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use crate::app::Services;
use crate::domain::phone;
use crate::store::StoreError;
use crate::store::contacts::{self, AudienceContact};

use super::*;

// -- audiences ---------------------------------------------------------------------------------

/// Who a campaign goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Audience {
    /// Contacts with any (or all) of the tags, matching the attributes, in the list: each part
    /// optional, at least one given.
    Contacts {
        tags: Option<Vec<String>>,
        all_tags: bool,
        attributes: Option<Value>,
        list: Option<Uuid>,
    },
    /// Numbers given explicitly (contacts' attributes are used where they exist).
    Numbers(Vec<String>),
}

impl Audience {
    /// From the `audience` object of a campaign definition.
    /// What [`Audience::parse`] takes, as a JSON Schema for the API's contract.
    pub fn schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Who receives the campaign: contacts by tags, attributes and list, or \
                explicit numbers (not both).",
            "type": "object",
            "minProperties": 1,
            "additionalProperties": false,
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "match": {"enum": ["any", "all"], "description": "whether a contact needs any \
                    of the tags (default) or all of them"},
                "attributes": {"type": "object"},
                "list_id": {"type": "string", "format": "uuid"},
                "numbers": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            },
        })
    }

    pub fn parse(raw: &Value) -> Result<Audience, CampaignError> {
        let object = raw.as_object().ok_or_else(|| {
            invalid(
                RefusalKind::Invalid,
                "invalid_field",
                "audience",
                "audience is an object",
            )
        })?;
        for key in object.keys() {
            if !matches!(
                key.as_str(),
                "tags" | "match" | "attributes" | "list_id" | "numbers"
            ) {
                return Err(invalid(
                    RefusalKind::Invalid,
                    "invalid_field",
                    &format!("audience.{key}"),
                    "audience takes tags, match, attributes, list_id or numbers",
                ));
            }
        }
        if let Some(numbers) = object.get("numbers") {
            if object.len() > 1 {
                return Err(invalid(
                    RefusalKind::Invalid,
                    "invalid_field",
                    "audience.numbers",
                    "explicit numbers cannot be combined with tags, attributes or a list",
                ));
            }
            let list = numbers
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    invalid(
                        RefusalKind::Invalid,
                        "invalid_field",
                        "audience.numbers",
                        "numbers is a non-empty array of phone numbers",
                    )
                })?;
            let mut out = Vec::with_capacity(list.len());
            for n in list {
                out.push(
                    n.as_str()
                        .ok_or_else(|| {
                            invalid(
                                RefusalKind::Invalid,
                                "invalid_field",
                                "audience.numbers",
                                "numbers are strings",
                            )
                        })?
                        .to_string(),
                );
            }
            return Ok(Audience::Numbers(out));
        }
        let tags = match object.get("tags") {
            None => None,
            Some(Value::Array(list)) if !list.is_empty() => Some(
                list.iter()
                    .map(|t| t.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        invalid(
                            RefusalKind::Invalid,
                            "invalid_field",
                            "audience.tags",
                            "tags are strings",
                        )
                    })?,
            ),
            Some(_) => {
                return Err(invalid(
                    RefusalKind::Invalid,
                    "invalid_field",
                    "audience.tags",
                    "tags is a non-empty array of strings",
                ));
            }
        };
        let all_tags = match object.get("match").and_then(Value::as_str) {
            None | Some("any") => false,
            Some("all") => true,
            Some(_) => {
                return Err(invalid(
                    RefusalKind::Invalid,
                    "invalid_field",
                    "audience.match",
                    "match is any or all",
                ));
            }
        };
        let attributes = match object.get("attributes") {
            None => None,
            Some(Value::Object(o)) if !o.is_empty() => Some(Value::Object(o.clone())),
            Some(_) => {
                return Err(invalid(
                    RefusalKind::Invalid,
                    "invalid_field",
                    "audience.attributes",
                    "attributes is an object of attribute: value to match",
                ));
            }
        };
        let list =
            match object.get("list_id") {
                None => None,
                Some(v) => Some(v.as_str().and_then(|s| s.parse::<Uuid>().ok()).ok_or_else(
                    || {
                        invalid(
                            RefusalKind::Invalid,
                            "invalid_field",
                            "audience.list_id",
                            "list_id is the id an import returned",
                        )
                    },
                )?),
            };
        if tags.is_none() && attributes.is_none() && list.is_none() {
            return Err(invalid(
                RefusalKind::Invalid,
                "missing_field",
                "audience",
                "the audience needs tags, attributes, a list_id or numbers",
            ));
        }
        Ok(Audience::Contacts {
            tags,
            all_tags,
            attributes,
            list,
        })
    }
}

/// One audience member as read, before it is checked: its position, what was given, and the
/// contact if there is one.
pub(crate) struct Candidate {
    pub(crate) seq: i64,
    pub(crate) input: String,
    pub(crate) contact: Option<AudienceContact>,
}

/// The first contact of an audience, for a preview of what its members will see: None when the
/// audience is empty or starts with a number that is no contact.
pub async fn sample_contact(
    services: &Services,
    audience: &Value,
) -> Result<Option<AudienceContact>, CampaignError> {
    let audience = Audience::parse(audience)?;
    Ok(audience_page(services, &audience, 0, 1)
        .await?
        .into_iter()
        .next()
        .and_then(|c| c.contact))
}

/// The audience members after position `cursor`, at most `limit`, in position order.
pub(crate) async fn audience_page(
    services: &Services,
    audience: &Audience,
    cursor: i64,
    limit: i64,
) -> Result<Vec<Candidate>, StoreError> {
    match audience {
        Audience::Contacts {
            tags,
            all_tags,
            attributes,
            list,
        } => {
            let rows = contacts::audience_page(
                &services.pool,
                &contacts::AudienceFilter {
                    tags: tags.as_deref(),
                    all_tags: *all_tags,
                    attributes: attributes.as_ref(),
                    list: *list,
                },
                cursor,
                limit,
            )
            .await?;
            Ok(rows
                .into_iter()
                .map(|c| Candidate {
                    seq: c.id,
                    input: c.phone.clone(),
                    contact: Some(c),
                })
                .collect())
        }
        Audience::Numbers(numbers) => {
            let start = usize::try_from(cursor).unwrap_or(0).min(numbers.len());
            let end = (start + usize::try_from(limit).unwrap_or(0)).min(numbers.len());
            let slice = &numbers[start..end];
            let normalized: Vec<String> = slice
                .iter()
                .filter_map(|n| phone::normalize(n).ok())
                .map(|p| p.digits().to_string())
                .collect();
            let mut known: HashMap<String, AudienceContact> =
                contacts::contacts_by_phone(&services.pool, &normalized)
                    .await?
                    .into_iter()
                    .map(|c| (c.phone.clone(), c))
                    .collect();
            Ok(slice
                .iter()
                .enumerate()
                .map(|(i, input)| Candidate {
                    seq: (start + i + 1) as i64,
                    input: input.clone(),
                    contact: phone::normalize(input)
                        .ok()
                        .and_then(|p| known.remove(p.digits())),
                })
                .collect())
        }
    }
}

/// Whether anyone at all is in the audience (a campaign to nobody is refused at creation).
pub(crate) async fn audience_is_empty(
    services: &Services,
    audience: &Audience,
) -> Result<bool, StoreError> {
    Ok(match audience {
        Audience::Numbers(numbers) => !numbers.iter().any(|n| phone::normalize(n).is_ok()),
        Audience::Contacts { .. } => audience_page(services, audience, 0, 1).await?.is_empty(),
    })
}
