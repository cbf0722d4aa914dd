//! Validation of Cloud API message bodies, exactly as other systems send them to Meta.
//!
//! The body is checked against Meta's documented limits before anything is queued, so a message
//! that Meta would refuse never occupies a queue, a tier slot or a rate-limit token.

use serde_json::{Map, Value};

use super::phone::{self, PhoneNumber};

/// A refused body: a machine-readable code, the offending field (a JSON path) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} at {field}: {message}")]
pub struct Invalid {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

fn invalid(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        field: field.into(),
        message: message.into(),
    }
}

/// The part of a message the dispatcher reasons about; the body itself is forwarded untouched
/// except for the normalised recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedMessage {
    pub to: PhoneNumber,
    pub kind: MessageKind,
    /// The Cloud API body to send, with `to` normalised and pregon's own extensions removed.
    pub body: Value,
}

/// Puts pregon's message id in the body's `biz_opaque_callback_data` (which Meta echoes in every
/// status of the message) unless the caller set one: a send whose answer was lost can then still
/// be matched to Meta's statuses. A caller's own value is kept as it is.
pub fn tag_with_id(body: &mut Value, message_id: &str) {
    if let Some(obj) = body.as_object_mut()
        && !obj.contains_key("biz_opaque_callback_data")
    {
        obj.insert(
            "biz_opaque_callback_data".into(),
            Value::String(message_id.to_string()),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKind {
    Template { name: String, language: String },
    Text,
    Interactive,
    Media(&'static str),
}

impl MessageKind {
    /// Free-form messages need an open customer-service window; templates do not.
    pub fn is_free_form(&self) -> bool {
        !matches!(self, MessageKind::Template { .. })
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            MessageKind::Template { .. } => "template",
            MessageKind::Text => "text",
            MessageKind::Interactive => "interactive",
            MessageKind::Media(kind) => kind,
        }
    }
}

/// Meta's documented limits, in characters.
pub mod limits {
    pub const TEXT_BODY: usize = 4096;
    pub const INTERACTIVE_BODY: usize = 4096;
    pub const HEADER_TEXT: usize = 60;
    pub const FOOTER: usize = 60;
    pub const MAX_REPLY_BUTTONS: usize = 3;
    pub const BUTTON_TITLE: usize = 20;
    pub const BUTTON_ID: usize = 256;
    pub const LIST_BUTTON: usize = 20;
    pub const LIST_SECTIONS: usize = 10;
    pub const LIST_ROWS: usize = 10;
    pub const SECTION_TITLE: usize = 24;
    pub const ROW_TITLE: usize = 24;
    pub const ROW_DESCRIPTION: usize = 72;
    pub const ROW_ID: usize = 200;
    pub const CAPTION: usize = 1024;
    pub const FILENAME: usize = 240;
    pub const TEMPLATE_NAME: usize = 512;
    pub const TEMPLATE_TEXT_PARAMETER: usize = 32_768;
}

/// Fields pregon accepts beside Meta's own and strips before sending.
pub const EXTENSION_FIELDS: &[&str] = &["idempotency_key"];

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// An idempotency key, wherever it comes from (the header, the body, an ingest envelope): 1 to
/// 255 bytes with no control character. Checked before anything is written, so a bad key is one
/// refused request, never a failed write that takes the other messages of its batch with it.
pub fn check_idempotency_key(key: &str, field: &str) -> Result<(), Invalid> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(char::is_control)
    {
        return Err(invalid(
            "invalid_field",
            field,
            format!(
                "{field} must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes with no control character"
            ),
        ));
    }
    Ok(())
}

/// The message types pregon sends, as the Cloud API names them.
pub const MESSAGE_TYPES: [&str; 8] = [
    "template",
    "text",
    "interactive",
    "image",
    "document",
    "video",
    "audio",
    "sticker",
];

/// The request's outline as a JSON Schema, for the API's contract: what [`validate`] requires
/// at the top level. The finer rules (lengths inside a template, buttons, rows) are checked by
/// `validate`, which names the field it refuses.
pub fn request_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let typed_object = serde_json::json!({"type": "object"});
    schemars::json_schema!({
        "type": "object",
        "description": "A Cloud API message (POST /{phone_number_id}/messages), plus pregon's \
            optional idempotency_key.",
        "required": ["messaging_product", "to", "type"],
        "properties": {
            "messaging_product": {"const": "whatsapp"},
            "recipient_type": {"const": "individual"},
            "to": {"type": "string", "description": "The recipient's phone number, in any \
                spelling with its country code"},
            "type": {"enum": MESSAGE_TYPES},
            "idempotency_key": {"type": "string", "minLength": 1,
                "maxLength": MAX_IDEMPOTENCY_KEY_BYTES},
            "text": {"type": "object", "required": ["body"], "properties": {
                "body": {"type": "string", "minLength": 1, "maxLength": limits::TEXT_BODY},
                "preview_url": {"type": "boolean"}}},
            "template": {"type": "object", "required": ["name", "language"], "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": limits::TEMPLATE_NAME},
                "language": {"type": "object", "required": ["code"],
                    "properties": {"code": {"type": "string"}}},
                "components": {"type": "array", "items": {"type": "object"}}}},
            "interactive": typed_object,
            "image": typed_object,
            "document": typed_object,
            "video": typed_object,
            "audio": typed_object,
            "sticker": typed_object,
            "context": typed_object,
            "biz_opaque_callback_data": {"type": "string"},
        },
    })
}

pub fn validate(body: &Value) -> Result<ValidatedMessage, Invalid> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("invalid_body", "", "the message body must be a JSON object"))?;
    if let Some(field) = super::text::unstorable_path(body) {
        return Err(invalid(
            super::text::NUL_CODE,
            field,
            super::text::NUL_MESSAGE,
        ));
    }
    match obj.get("idempotency_key") {
        None => {}
        Some(Value::String(key)) => check_idempotency_key(key, "idempotency_key")?,
        Some(_) => {
            return Err(invalid(
                "invalid_field",
                "idempotency_key",
                "idempotency_key must be a string",
            ));
        }
    }
    match obj.get("messaging_product").and_then(Value::as_str) {
        Some("whatsapp") => {}
        _ => {
            return Err(invalid(
                "invalid_field",
                "messaging_product",
                "messaging_product must be \"whatsapp\"",
            ));
        }
    }
    if let Some(rt) = obj.get("recipient_type")
        && rt.as_str() != Some("individual")
    {
        return Err(invalid(
            "invalid_field",
            "recipient_type",
            "recipient_type must be \"individual\"",
        ));
    }
    let raw_to = required_str(obj, "to", "to")?;
    let to = phone::normalize(raw_to)
        .map_err(|e| invalid("invalid_phone_number", "to", e.to_string()))?;
    let kind_name = required_str(obj, "type", "type")?;
    let kind = match kind_name {
        "template" => validate_template(object(obj, "template", "template")?)?,
        "text" => {
            let text = object(obj, "text", "text")?;
            text_field(text, "body", "text.body", 1, limits::TEXT_BODY)?;
            MessageKind::Text
        }
        "interactive" => {
            validate_interactive(object(obj, "interactive", "interactive")?)?;
            MessageKind::Interactive
        }
        "image" => media(obj, "image", true, false)?,
        "document" => media(obj, "document", true, true)?,
        "video" => media(obj, "video", true, false)?,
        "audio" => media(obj, "audio", false, false)?,
        "sticker" => media(obj, "sticker", false, false)?,
        other => {
            return Err(invalid(
                "unsupported_message_type",
                "type",
                format!("message type \"{other}\" is not supported"),
            ));
        }
    };
    let mut clean = obj.clone();
    for field in EXTENSION_FIELDS {
        clean.remove(*field);
    }
    clean.insert("to".into(), Value::String(to.digits().to_string()));
    Ok(ValidatedMessage {
        to,
        kind,
        body: Value::Object(clean),
    })
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, Invalid> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(
            "invalid_field",
            path,
            format!("{path} must be a string"),
        )),
        None => Err(invalid(
            "missing_field",
            path,
            format!("{path} is required"),
        )),
    }
}

fn object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Map<String, Value>, Invalid> {
    match obj.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(invalid(
            "invalid_field",
            path,
            format!("{path} must be an object"),
        )),
        None => Err(invalid(
            "missing_field",
            path,
            format!("{path} is required"),
        )),
    }
}

fn array<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Vec<Value>, Invalid> {
    match obj.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(invalid(
            "invalid_field",
            path,
            format!("{path} must be an array"),
        )),
        None => Err(invalid(
            "missing_field",
            path,
            format!("{path} is required"),
        )),
    }
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Invalid> {
    value
        .as_object()
        .ok_or_else(|| invalid("invalid_field", path, format!("{path} must be an object")))
}

/// A required string whose length in characters lies within `min..=max`.
fn text_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
    min: usize,
    max: usize,
) -> Result<&'a str, Invalid> {
    let s = required_str(obj, key, path)?;
    check_length(s, path, min, max)?;
    Ok(s)
}

fn optional_text(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    max: usize,
) -> Result<(), Invalid> {
    if obj.contains_key(key) {
        text_field(obj, key, path, 0, max)?;
    }
    Ok(())
}

fn check_length(s: &str, path: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let len = s.chars().count();
    if len < min {
        return Err(invalid(
            if min == 1 {
                "missing_field"
            } else {
                "too_short"
            },
            path,
            format!("{path} must have at least {min} characters"),
        ));
    }
    if len > max {
        return Err(invalid(
            "too_long",
            path,
            format!("{path} has {len} characters; the limit is {max}"),
        ));
    }
    Ok(())
}

fn validate_template(t: &Map<String, Value>) -> Result<MessageKind, Invalid> {
    let name = text_field(t, "name", "template.name", 1, limits::TEMPLATE_NAME)?;
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(invalid(
            "invalid_field",
            "template.name",
            "template names use lowercase letters, digits and underscores",
        ));
    }
    let language = object(t, "language", "template.language")?;
    let code = text_field(language, "code", "template.language.code", 2, 15)?;
    if let Some(components) = t.get("components") {
        let components = components.as_array().ok_or_else(|| {
            invalid(
                "invalid_field",
                "template.components",
                "template.components must be an array",
            )
        })?;
        for (i, component) in components.iter().enumerate() {
            let path = format!("template.components[{i}]");
            let component = as_object(component, &path)?;
            let kind = required_str(component, "type", &format!("{path}.type"))?;
            match kind {
                "header" | "body" | "footer" => {}
                "button" => {
                    let sub = required_str(component, "sub_type", &format!("{path}.sub_type"))?;
                    if !matches!(
                        sub,
                        "quick_reply"
                            | "url"
                            | "copy_code"
                            | "flow"
                            | "catalog"
                            | "mpm"
                            | "voice_call"
                    ) {
                        return Err(invalid(
                            "invalid_field",
                            format!("{path}.sub_type"),
                            format!("unknown button sub_type \"{sub}\""),
                        ));
                    }
                    let index = component.get("index").and_then(|v| match v {
                        Value::String(s) => s.parse::<u8>().ok(),
                        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
                        _ => None,
                    });
                    if !matches!(index, Some(0..=9)) {
                        return Err(invalid(
                            "invalid_field",
                            format!("{path}.index"),
                            "button index must be 0 to 9",
                        ));
                    }
                }
                other => {
                    return Err(invalid(
                        "invalid_field",
                        format!("{path}.type"),
                        format!("unknown component type \"{other}\""),
                    ));
                }
            }
            if let Some(parameters) = component.get("parameters") {
                let ppath = format!("{path}.parameters");
                let parameters = parameters.as_array().ok_or_else(|| {
                    invalid(
                        "invalid_field",
                        ppath.clone(),
                        format!("{ppath} must be an array"),
                    )
                })?;
                for (j, parameter) in parameters.iter().enumerate() {
                    validate_parameter(parameter, &format!("{ppath}[{j}]"))?;
                }
            }
        }
    }
    Ok(MessageKind::Template {
        name: name.to_string(),
        language: code.to_string(),
    })
}

fn validate_parameter(parameter: &Value, path: &str) -> Result<(), Invalid> {
    let parameter = as_object(parameter, path)?;
    let kind = required_str(parameter, "type", &format!("{path}.type"))?;
    match kind {
        "text" => {
            text_field(
                parameter,
                "text",
                &format!("{path}.text"),
                1,
                limits::TEMPLATE_TEXT_PARAMETER,
            )?;
        }
        "payload" => {
            text_field(
                parameter,
                "payload",
                &format!("{path}.payload"),
                1,
                limits::BUTTON_ID,
            )?;
        }
        "currency" | "date_time" | "image" | "document" | "video" | "location" | "action"
        | "coupon_code" => {
            if !parameter.contains_key(kind) {
                return Err(invalid(
                    "missing_field",
                    format!("{path}.{kind}"),
                    format!("a {kind} parameter needs a \"{kind}\" object"),
                ));
            }
        }
        other => {
            return Err(invalid(
                "invalid_field",
                format!("{path}.type"),
                format!("unknown parameter type \"{other}\""),
            ));
        }
    }
    Ok(())
}

fn validate_interactive(i: &Map<String, Value>) -> Result<(), Invalid> {
    let kind = required_str(i, "type", "interactive.type")?;
    let body = object(i, "body", "interactive.body")?;
    text_field(
        body,
        "text",
        "interactive.body.text",
        1,
        limits::INTERACTIVE_BODY,
    )?;
    if let Some(footer) = i.get("footer") {
        let footer = as_object(footer, "interactive.footer")?;
        text_field(footer, "text", "interactive.footer.text", 1, limits::FOOTER)?;
    }
    if let Some(header) = i.get("header") {
        let header = as_object(header, "interactive.header")?;
        if required_str(header, "type", "interactive.header.type")? == "text" {
            text_field(
                header,
                "text",
                "interactive.header.text",
                1,
                limits::HEADER_TEXT,
            )?;
        }
    }
    let action = object(i, "action", "interactive.action")?;
    match kind {
        "button" => validate_buttons(action),
        "list" => validate_list(action),
        other => Err(invalid(
            "unsupported_message_type",
            "interactive.type",
            format!("interactive type \"{other}\" is not supported; use button or list"),
        )),
    }
}

fn validate_buttons(action: &Map<String, Value>) -> Result<(), Invalid> {
    let buttons = array(action, "buttons", "interactive.action.buttons")?;
    if buttons.is_empty() {
        return Err(invalid(
            "missing_field",
            "interactive.action.buttons",
            "at least one reply button is required",
        ));
    }
    if buttons.len() > limits::MAX_REPLY_BUTTONS {
        return Err(invalid(
            "too_many_buttons",
            "interactive.action.buttons",
            format!(
                "{} reply buttons given; the limit is {}",
                buttons.len(),
                limits::MAX_REPLY_BUTTONS
            ),
        ));
    }
    let mut ids = Vec::with_capacity(buttons.len());
    for (i, button) in buttons.iter().enumerate() {
        let path = format!("interactive.action.buttons[{i}]");
        let button = as_object(button, &path)?;
        if required_str(button, "type", &format!("{path}.type"))? != "reply" {
            return Err(invalid(
                "invalid_field",
                format!("{path}.type"),
                "button type must be \"reply\"",
            ));
        }
        let reply = object(button, "reply", &format!("{path}.reply"))?;
        let id = text_field(
            reply,
            "id",
            &format!("{path}.reply.id"),
            1,
            limits::BUTTON_ID,
        )?;
        text_field(
            reply,
            "title",
            &format!("{path}.reply.title"),
            1,
            limits::BUTTON_TITLE,
        )?;
        if ids.contains(&id) {
            return Err(invalid(
                "duplicate_button_id",
                format!("{path}.reply.id"),
                "reply button ids must be unique",
            ));
        }
        ids.push(id);
    }
    Ok(())
}

fn validate_list(action: &Map<String, Value>) -> Result<(), Invalid> {
    text_field(
        action,
        "button",
        "interactive.action.button",
        1,
        limits::LIST_BUTTON,
    )?;
    let sections = array(action, "sections", "interactive.action.sections")?;
    if sections.is_empty() || sections.len() > limits::LIST_SECTIONS {
        return Err(invalid(
            "too_many_sections",
            "interactive.action.sections",
            format!("a list needs 1 to {} sections", limits::LIST_SECTIONS),
        ));
    }
    let mut total_rows = 0;
    for (s, section) in sections.iter().enumerate() {
        let path = format!("interactive.action.sections[{s}]");
        let section = as_object(section, &path)?;
        if sections.len() > 1 {
            text_field(
                section,
                "title",
                &format!("{path}.title"),
                1,
                limits::SECTION_TITLE,
            )?;
        } else {
            optional_text(
                section,
                "title",
                &format!("{path}.title"),
                limits::SECTION_TITLE,
            )?;
        }
        let rows = array(section, "rows", &format!("{path}.rows"))?;
        for (r, row) in rows.iter().enumerate() {
            let rpath = format!("{path}.rows[{r}]");
            let row = as_object(row, &rpath)?;
            text_field(row, "id", &format!("{rpath}.id"), 1, limits::ROW_ID)?;
            text_field(
                row,
                "title",
                &format!("{rpath}.title"),
                1,
                limits::ROW_TITLE,
            )?;
            optional_text(
                row,
                "description",
                &format!("{rpath}.description"),
                limits::ROW_DESCRIPTION,
            )?;
        }
        total_rows += rows.len();
        if total_rows > limits::LIST_ROWS {
            return Err(invalid(
                "too_many_rows",
                format!("{path}.rows"),
                format!(
                    "a list may have at most {} rows in total",
                    limits::LIST_ROWS
                ),
            ));
        }
    }
    if total_rows == 0 {
        return Err(invalid(
            "missing_field",
            "interactive.action.sections[0].rows",
            "a list needs at least one row",
        ));
    }
    Ok(())
}

fn media(
    obj: &Map<String, Value>,
    kind: &'static str,
    caption: bool,
    filename: bool,
) -> Result<MessageKind, Invalid> {
    let m = object(obj, kind, kind)?;
    match (m.get("link"), m.get("id")) {
        (Some(Value::String(link)), None) => {
            if !(link.starts_with("https://") || link.starts_with("http://")) || link.len() < 10 {
                return Err(invalid(
                    "invalid_field",
                    format!("{kind}.link"),
                    "media link must be an http(s) URL",
                ));
            }
        }
        (None, Some(Value::String(id))) if !id.is_empty() => {}
        (Some(_), Some(_)) => {
            return Err(invalid(
                "invalid_field",
                kind,
                format!("{kind} takes either link or id, not both"),
            ));
        }
        _ => {
            return Err(invalid(
                "missing_field",
                format!("{kind}.link"),
                format!("{kind} needs a link (or a media id)"),
            ));
        }
    }
    if caption {
        optional_text(m, "caption", &format!("{kind}.caption"), limits::CAPTION)?;
    }
    if filename {
        optional_text(m, "filename", &format!("{kind}.filename"), limits::FILENAME)?;
    }
    Ok(MessageKind::Media(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_the_contract_lists_is_one_validate_takes() {
        for kind in MESSAGE_TYPES {
            let body = serde_json::json!({"messaging_product": "whatsapp", "to": "5215512345678",
                                          "type": kind});
            let refused = validate(&body).unwrap_err();
            // Refused for the missing content object, never for the type itself.
            assert_eq!(refused.field, kind, "{kind}: {refused}");
        }
        let other = serde_json::json!({"messaging_product": "whatsapp", "to": "5215512345678",
                                       "type": "location"});
        assert_eq!(
            validate(&other).unwrap_err().code,
            "unsupported_message_type"
        );
    }

    #[test]
    fn idempotency_keys_are_short_printable_text() {
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
        let too_long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        let cases = [
            ("order-1234-shipped", true),
            ("pedido ñandú 7", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            ("a\0b", false),
            ("tab\there", false),
            ("line\nbreak", false),
        ];
        for (key, ok) in cases {
            assert_eq!(check_idempotency_key(key, "k").is_ok(), ok, "{key:?}");
        }
        let mut body = serde_json::json!({"messaging_product": "whatsapp", "to": "5215512345678",
            "type": "text", "text": {"body": "hola"}});
        assert!(validate(&body).is_ok());
        body["idempotency_key"] = serde_json::json!("a\u{0}b");
        assert_eq!(validate(&body).unwrap_err().field, "idempotency_key");
        body["idempotency_key"] = serde_json::json!(7);
        assert_eq!(validate(&body).unwrap_err().field, "idempotency_key");
    }
    use serde_json::json;

    fn buttons(n: usize) -> Value {
        let list: Vec<Value> = (0..n)
            .map(|i| json!({"type":"reply","reply":{"id":format!("b{i}"),"title":format!("Option {i}")}}))
            .collect();
        json!({"messaging_product":"whatsapp","to":"+52 55 1234 5678","type":"interactive",
               "interactive":{"type":"button","body":{"text":"Choose"},"action":{"buttons":list}}})
    }

    fn list(rows_per_section: &[usize]) -> Value {
        let sections: Vec<Value> = rows_per_section
            .iter()
            .enumerate()
            .map(|(s, n)| {
                let rows: Vec<Value> = (0..*n)
                    .map(|r| json!({"id":format!("r{s}-{r}"),"title":"Row","description":"d"}))
                    .collect();
                json!({"title":format!("S{s}"),"rows":rows})
            })
            .collect();
        json!({"messaging_product":"whatsapp","to":"525512345678","type":"interactive",
               "interactive":{"type":"list","body":{"text":"Menu"},"action":{"button":"See","sections":sections}}})
    }

    #[test]
    fn template_is_accepted_and_recipient_normalised() {
        let body = json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"+52 1 55 1234 5678",
            "type":"template","idempotency_key":"k1",
            "template":{"name":"order_update","language":{"code":"es_MX"},
              "components":[{"type":"body","parameters":[{"type":"text","text":"Ana"}]},
                {"type":"button","sub_type":"quick_reply","index":"0","parameters":[{"type":"payload","payload":"STOP"}]}]}});
        let m = validate(&body).unwrap();
        assert_eq!(
            m.kind,
            MessageKind::Template {
                name: "order_update".into(),
                language: "es_MX".into()
            }
        );
        assert!(!m.kind.is_free_form());
        assert_eq!(m.body["to"], "5215512345678");
        assert!(m.body.get("idempotency_key").is_none());
    }

    #[test]
    fn text_limits() {
        let ok = json!({"messaging_product":"whatsapp","to":"525512345678","type":"text","text":{"body":"hola"}});
        assert_eq!(validate(&ok).unwrap().kind, MessageKind::Text);
        let long = json!({"messaging_product":"whatsapp","to":"525512345678","type":"text",
            "text":{"body":"á".repeat(4097)}});
        let err = validate(&long).unwrap_err();
        assert_eq!((err.code, err.field.as_str()), ("too_long", "text.body"));
        let exactly = json!({"messaging_product":"whatsapp","to":"525512345678","type":"text",
            "text":{"body":"á".repeat(4096)}});
        assert!(validate(&exactly).is_ok());
    }

    #[test]
    fn reply_buttons_one_to_three() {
        assert!(validate(&buttons(3)).is_ok());
        let err = validate(&buttons(4)).unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("too_many_buttons", "interactive.action.buttons")
        );
        assert_eq!(validate(&buttons(0)).unwrap_err().code, "missing_field");
        let mut long_title = buttons(1);
        long_title["interactive"]["action"]["buttons"][0]["reply"]["title"] = json!("x".repeat(21));
        let err = validate(&long_title).unwrap_err();
        assert_eq!(err.field, "interactive.action.buttons[0].reply.title");
    }

    #[test]
    fn list_rows_at_most_ten_in_total() {
        assert!(validate(&list(&[10])).is_ok());
        assert!(validate(&list(&[5, 5])).is_ok());
        let err = validate(&list(&[6, 5])).unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("too_many_rows", "interactive.action.sections[1].rows")
        );
        let err = validate(&list(&[11])).unwrap_err();
        assert_eq!(err.code, "too_many_rows");
        let mut long_row = list(&[1]);
        long_row["interactive"]["action"]["sections"][0]["rows"][0]["title"] =
            json!("y".repeat(25));
        assert_eq!(
            validate(&long_row).unwrap_err().field,
            "interactive.action.sections[0].rows[0].title"
        );
    }

    #[test]
    fn media_by_link() {
        let ok = json!({"messaging_product":"whatsapp","to":"525512345678","type":"document",
            "document":{"link":"https://example.com/invoice.pdf","filename":"invoice.pdf"}});
        assert_eq!(validate(&ok).unwrap().kind, MessageKind::Media("document"));
        let bad = json!({"messaging_product":"whatsapp","to":"525512345678","type":"image","image":{"link":"ftp://x/y.png"}});
        assert_eq!(validate(&bad).unwrap_err().field, "image.link");
        let none =
            json!({"messaging_product":"whatsapp","to":"525512345678","type":"image","image":{}});
        assert_eq!(validate(&none).unwrap_err().code, "missing_field");
    }

    #[test]
    fn envelope_errors_name_the_field() {
        let err =
            validate(&json!({"to":"525512345678","type":"text","text":{"body":"x"}})).unwrap_err();
        assert_eq!(err.field, "messaging_product");
        let err = validate(
            &json!({"messaging_product":"whatsapp","to":"12","type":"text","text":{"body":"x"}}),
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("invalid_phone_number", "to")
        );
        let err = validate(
            &json!({"messaging_product":"whatsapp","to":"525512345678","type":"carrier_pigeon"}),
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.field.as_str()),
            ("unsupported_message_type", "type")
        );
        let err = validate(&json!([1, 2])).unwrap_err();
        assert_eq!(err.code, "invalid_body");
    }

    #[test]
    fn the_message_id_rides_in_the_callback_data_unless_the_caller_set_one() {
        let mut body = serde_json::json!({"messaging_product": "whatsapp", "to": "5215512345678"});
        tag_with_id(&mut body, "0197a1f0");
        assert_eq!(body["biz_opaque_callback_data"], "0197a1f0");
        let mut theirs = serde_json::json!({"biz_opaque_callback_data": "order-17"});
        tag_with_id(&mut theirs, "0197a1f0");
        assert_eq!(theirs["biz_opaque_callback_data"], "order-17");
    }
}
