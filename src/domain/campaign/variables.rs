//! Template parameter slots and per-recipient variables: which slots a template has, how a
//! campaign maps them to contact fields or fixed values, and the rendered Cloud API body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The parameter slots a template needs, from its components as the Cloud API lists them:
/// `header.1`, `body.1`, `body.2` (or named: `body.first_name`) and `button.{index}.1` for URL
/// buttons with a variable suffix. Order: header, body, buttons.
pub fn parameter_slots(components: &Value) -> Vec<String> {
    let mut slots = Vec::new();
    let Some(list) = components.as_array() else {
        return slots;
    };
    for component in list {
        let kind = component
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        match kind.as_str() {
            "header" | "body" => {
                let text_format = component
                    .get("format")
                    .and_then(Value::as_str)
                    .is_none_or(|f| f.eq_ignore_ascii_case("text"));
                if let (true, Some(text)) =
                    (text_format, component.get("text").and_then(Value::as_str))
                {
                    for name in placeholders(text) {
                        slots.push(format!("{kind}.{name}"));
                    }
                }
            }
            "buttons" => {
                let buttons = component.get("buttons").and_then(Value::as_array);
                for (index, button) in buttons.into_iter().flatten().enumerate() {
                    let is_url = button
                        .get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.eq_ignore_ascii_case("url"));
                    let url = button.get("url").and_then(Value::as_str).unwrap_or("");
                    if is_url && !placeholders(url).is_empty() {
                        slots.push(format!("button.{index}.1"));
                    }
                }
            }
            _ => {}
        }
    }
    slots
}

/// `{{1}}`, `{{2}}` or `{{first_name}}` placeholders of a template text, each once, in order.
fn placeholders(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !found.iter().any(|f| f == name)
        {
            found.push(name.to_string());
        }
        rest = &after[end + 2..];
    }
    found
}

/// Where one template parameter's value comes from for each recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableSource {
    /// A contact field (`name`, `language`, `country`, `phone`) or a key of its attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    /// A fixed value for every recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Used when the attribute is missing or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

pub type VariableMap = BTreeMap<String, VariableSource>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("the template needs {expected} parameters ({slots}); the mapping gives {given}")]
    CountMismatch {
        expected: usize,
        given: usize,
        slots: String,
    },
    #[error("the template has no parameter {0}")]
    UnknownSlot(String),
    #[error("parameter {0} needs exactly one of attribute or value")]
    NoSource(String),
}

/// The mapping names every slot of the template, and nothing else.
pub fn validate_mapping(slots: &[String], mapping: &VariableMap) -> Result<(), MappingError> {
    for (slot, source) in mapping {
        if !slots.contains(slot) {
            return Err(MappingError::UnknownSlot(slot.clone()));
        }
        if source.attribute.is_some() == source.value.is_some() {
            return Err(MappingError::NoSource(slot.clone()));
        }
    }
    if mapping.len() != slots.len() {
        return Err(MappingError::CountMismatch {
            expected: slots.len(),
            given: mapping.len(),
            slots: slots.join(", "),
        });
    }
    Ok(())
}

/// What the variables of one recipient are drawn from.
#[derive(Debug, Clone, Copy)]
pub struct ContactView<'a> {
    pub phone: &'a str,
    pub name: Option<&'a str>,
    pub language: Option<&'a str>,
    pub country: &'a str,
    pub attributes: &'a Value,
}

impl ContactView<'_> {
    fn lookup(&self, attribute: &str) -> Option<String> {
        let found = match attribute {
            "name" => self.name.map(str::to_string),
            "language" => self.language.map(str::to_string),
            "country" => Some(self.country.to_string()),
            "phone" => Some(self.phone.to_string()),
            key => match self.attributes.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            },
        };
        found.filter(|v| !v.trim().is_empty())
    }
}

/// Each slot's value for one recipient, in slot order, or the first slot with no value and no
/// default.
pub fn resolve_values(
    slots: &[String],
    mapping: &VariableMap,
    contact: &ContactView<'_>,
) -> Result<Vec<(String, String)>, String> {
    slots
        .iter()
        .map(|slot| {
            let source = mapping.get(slot).ok_or_else(|| slot.clone())?;
            let value = match (&source.value, &source.attribute) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(attribute)) => contact.lookup(attribute),
                (None, None) => None,
            }
            .or_else(|| source.default.clone())
            .ok_or_else(|| slot.clone())?;
            Ok((slot.clone(), value))
        })
        .collect()
}

/// The template `components` for one recipient, or the first slot with no value and no default.
pub fn render_components(
    slots: &[String],
    mapping: &VariableMap,
    contact: &ContactView<'_>,
) -> Result<Value, String> {
    let mut header = Vec::new();
    let mut body = Vec::new();
    let mut buttons: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for (slot, value) in resolve_values(slots, mapping, contact)? {
        let mut parts = slot.splitn(3, '.');
        let kind = parts.next().unwrap_or("");
        let name = parts.next().unwrap_or("");
        let mut parameter = json!({"type": "text", "text": value});
        if !name.chars().all(|c| c.is_ascii_digit()) && kind != "button" {
            parameter["parameter_name"] = json!(name);
        }
        match kind {
            "header" => header.push(parameter),
            "button" => buttons
                .entry(name.parse().unwrap_or(0))
                .or_default()
                .push(parameter),
            _ => body.push(parameter),
        }
    }
    let mut components = Vec::new();
    if !header.is_empty() {
        components.push(json!({"type": "header", "parameters": header}));
    }
    if !body.is_empty() {
        components.push(json!({"type": "body", "parameters": body}));
    }
    for (index, parameters) in buttons {
        components.push(
            json!({"type": "button", "sub_type": "url", "index": index.to_string(),
            "parameters": parameters}),
        );
    }
    Ok(Value::Array(components))
}

/// What a recipient sees of a template: its texts with the recipient's values in place (a
/// placeholder without a value stays as written), a media header by its kind, and the buttons.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bubble {
    pub header: Option<String>,
    pub body: String,
    pub footer: Option<String>,
    pub buttons: Vec<String>,
}

pub fn bubble(components: &Value, values: &[(String, String)]) -> Bubble {
    let fill = |kind: &str, text: &str| {
        let mut out = text.to_string();
        for name in placeholders(text) {
            if let Some((_, v)) = values.iter().find(|(s, _)| *s == format!("{kind}.{name}")) {
                out = out.replace(&format!("{{{{{name}}}}}"), v);
            }
        }
        out
    };
    let mut bubble = Bubble::default();
    for component in components.as_array().into_iter().flatten() {
        let text = component.get("text").and_then(Value::as_str);
        match component
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
            .as_str()
        {
            "header" => {
                let format = component
                    .get("format")
                    .and_then(Value::as_str)
                    .unwrap_or("TEXT");
                bubble.header = if format.eq_ignore_ascii_case("text") {
                    text.map(|t| fill("header", t))
                } else {
                    Some(format!("[{}]", format.to_ascii_uppercase()))
                };
            }
            "body" => bubble.body = text.map(|t| fill("body", t)).unwrap_or_default(),
            "footer" => bubble.footer = text.map(str::to_string),
            "buttons" => {
                for button in component
                    .get("buttons")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(label) = button.get("text").and_then(Value::as_str) {
                        bubble.buttons.push(label.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    bubble
}

/// The Cloud API body of one campaign message.
pub fn message_body(to: &str, name: &str, language: &str, components: Value) -> Value {
    let mut template = json!({"name": name, "language": {"code": language}});
    if components.as_array().is_some_and(|c| !c.is_empty()) {
        template["components"] = components;
    }
    json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
        "type": "template", "template": template})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components() -> Value {
        json!([
            {"type": "HEADER", "format": "TEXT", "text": "Hola {{1}}"},
            {"type": "BODY", "text": "{{1}}, tu cupón {{2}} vence el {{3}}. {{1}}!"},
            {"type": "BUTTONS", "buttons": [
                {"type": "QUICK_REPLY", "text": "Parar"},
                {"type": "URL", "text": "Ver", "url": "https://x.mx/c/{{1}}"}]}
        ])
    }

    #[test]
    fn slots_come_from_header_body_and_url_buttons() {
        assert_eq!(
            parameter_slots(&components()),
            vec!["header.1", "body.1", "body.2", "body.3", "button.1.1"]
        );
        let named = json!([{"type": "BODY", "text": "Hi {{first_name}} {{ city }}"}]);
        assert_eq!(
            parameter_slots(&named),
            vec!["body.first_name", "body.city"]
        );
        let image = json!([{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "x"}]);
        assert!(parameter_slots(&image).is_empty());
    }

    fn attr(a: &str, default: Option<&str>) -> VariableSource {
        VariableSource {
            attribute: Some(a.into()),
            value: None,
            default: default.map(str::to_string),
        }
    }

    #[test]
    fn mappings_must_name_every_slot_once() {
        let slots = vec!["body.1".to_string(), "body.2".to_string()];
        let mut map = VariableMap::new();
        map.insert("body.1".into(), attr("name", None));
        assert!(matches!(
            validate_mapping(&slots, &map),
            Err(MappingError::CountMismatch {
                expected: 2,
                given: 1,
                ..
            })
        ));
        map.insert("body.3".into(), attr("x", None));
        assert_eq!(
            validate_mapping(&slots, &map),
            Err(MappingError::UnknownSlot("body.3".into()))
        );
        map.remove("body.3");
        map.insert(
            "body.2".into(),
            VariableSource {
                attribute: Some("a".into()),
                value: Some("b".into()),
                default: None,
            },
        );
        assert_eq!(
            validate_mapping(&slots, &map),
            Err(MappingError::NoSource("body.2".into()))
        );
        map.insert("body.2".into(), attr("coupon", None));
        assert_eq!(validate_mapping(&slots, &map), Ok(()));
    }

    #[test]
    fn renders_per_recipient_values_and_reports_the_missing_one() {
        let slots = parameter_slots(&components());
        let mut map = VariableMap::new();
        map.insert("header.1".into(), attr("name", Some("cliente")));
        map.insert("body.1".into(), attr("name", Some("cliente")));
        map.insert("body.2".into(), attr("coupon", None));
        map.insert(
            "body.3".into(),
            VariableSource {
                attribute: None,
                value: Some("31/12".into()),
                default: None,
            },
        );
        map.insert("button.1.1".into(), attr("coupon", None));
        let attributes = json!({"coupon": "ABC", "points": 3});
        let contact = ContactView {
            phone: "5215512345678",
            name: None,
            language: None,
            country: "MX",
            attributes: &attributes,
        };
        let rendered = render_components(&slots, &map, &contact).unwrap();
        assert_eq!(rendered[0]["parameters"][0]["text"], "cliente");
        assert_eq!(rendered[1]["parameters"][1]["text"], "ABC");
        assert_eq!(rendered[1]["parameters"][2]["text"], "31/12");
        assert_eq!(rendered[2]["index"], "1");
        assert_eq!(rendered[2]["parameters"][0]["text"], "ABC");
        let empty = json!({});
        let without = ContactView {
            attributes: &empty,
            ..contact
        };
        assert_eq!(
            render_components(&slots, &map, &without),
            Err("body.2".into())
        );
        let body = message_body("5215512345678", "promo", "es_MX", rendered);
        assert_eq!(body["template"]["language"]["code"], "es_MX");
        assert_eq!(body["template"]["components"][1]["type"], "body");
    }

    #[test]
    fn a_bubble_shows_the_texts_with_the_recipients_values() {
        let components = json!([
            {"type": "HEADER", "format": "TEXT", "text": "Hola {{1}}"},
            {"type": "BODY", "text": "{{1}}, usa {{2}} antes del {{3}}"},
            {"type": "FOOTER", "text": "Responde STOP para no recibir más"},
            {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Me interesa"},
                                             {"type": "URL", "text": "Ver", "url": "https://x.mx/{{1}}"}]}
        ]);
        let values: Vec<(String, String)> = [
            ("header.1", "Ana"),
            ("body.1", "Ana"),
            ("body.2", "NAVIDAD10"),
        ]
        .iter()
        .map(|(s, v)| (s.to_string(), v.to_string()))
        .collect();
        let b = bubble(&components, &values);
        assert_eq!(b.header.as_deref(), Some("Hola Ana"));
        assert_eq!(b.body, "Ana, usa NAVIDAD10 antes del {{3}}");
        assert_eq!(
            b.footer.as_deref(),
            Some("Responde STOP para no recibir más")
        );
        assert_eq!(b.buttons, vec!["Me interesa", "Ver"]);
        let image = bubble(&json!([{"type": "HEADER", "format": "IMAGE"}]), &[]);
        assert_eq!(image.header.as_deref(), Some("[IMAGE]"));
        assert_eq!(bubble(&json!(null), &[]), Bubble::default());
    }
}
