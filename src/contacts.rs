//! Contact imports (a CSV streamed in chunks, written in batches, every bad row reported with its
//! number and reason) and the rebuild of Redis's consent copy from PostgreSQL's log.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::app::{AppError, Services};
use crate::domain::csv::{CsvError, RecordReader};
use crate::domain::decision::ConsentAction;
use crate::domain::phone;
use crate::domain::refusal::Refusal;
use crate::store::contacts::{self as cstore, ContactInput, ImportError, ImportTotals};
use crate::store::{ConsentEvent, StoreError};

/// Rows written per batch.
const BATCH: usize = 2000;
/// Row errors returned in the answer; the rest are kept in PostgreSQL.
const ERRORS_IN_REPORT: usize = 1000;
/// Rows an import must write before it refreshes the planner's statistics itself.
const FRESH_STATISTICS_AFTER: u64 = 10_000;

pub const CONSENT_SOURCES: &[&str] = &[
    "web_form", "checkout", "whatsapp", "import", "api", "keyword",
];

/// How the file's columns map to contacts.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub phone_column: String,
    pub name_column: Option<String>,
    pub language_column: Option<String>,
    /// Tags for every row.
    pub tags: Vec<String>,
    /// A column of `;`-separated tags.
    pub tags_column: Option<String>,
    /// Columns kept as attributes; `*` keeps every column not mapped otherwise.
    pub attribute_columns: Vec<String>,
    pub consent: Option<ConsentColumns>,
    /// Name of a list to put the imported contacts in.
    pub list: Option<String>,
    pub actor: String,
}

#[derive(Debug, Clone)]
pub struct ConsentColumns {
    /// yes/no (also si, true/false, 1/0, opt_in/opt_out); empty means no consent given.
    pub column: String,
    pub purpose: String,
    pub source: String,
    pub evidence_column: Option<String>,
    /// Evidence for rows whose evidence column is empty.
    pub evidence: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportFailure {
    /// The file cannot be imported at all (header, mapping): nothing was written.
    #[error(transparent)]
    Refused(Refusal),
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    App(#[from] AppError),
}

fn refused(field: &str, message: impl Into<String>) -> ImportFailure {
    ImportFailure::Refused(Refusal::invalid("invalid_csv", field, message))
}

/// Column positions, resolved from the header.
struct Columns {
    count: usize,
    phone: usize,
    name: Option<usize>,
    language: Option<usize>,
    tags: Option<usize>,
    attributes: Vec<(usize, String)>,
    consent: Option<usize>,
    evidence: Option<usize>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ImportReport {
    pub import_id: Uuid,
    pub list_id: Option<Uuid>,
    #[serde(flatten)]
    pub totals: ImportTotals,
    pub errors_by_reason: BTreeMap<String, u64>,
    /// The first row errors; all of them at GET /v1/contacts/imports/{id}/errors.csv.
    pub errors: Vec<ImportError>,
    pub interrupted: bool,
}

/// A checked row waiting for its batch: row number, contact, consent with evidence.
type Row = (u64, ContactInput, Option<(ConsentAction, String)>);

pub struct Importer {
    options: Arc<ImportOptions>,
    reader: RecordReader,
    columns: Option<Columns>,
    import_id: Uuid,
    list_id: Option<Uuid>,
    /// Data rows seen (row 1 is the first line after the header).
    row: u64,
    batch: Vec<Row>,
    /// Errors of rows not yet written, stored with their batch.
    errors: Vec<ImportError>,
    /// Batches being written, oldest first, while the file is read on.
    writing: VecDeque<Writing>,
    /// The first errors by row number (up to twice as many, sorted and cut when full).
    report_errors: Vec<ImportError>,
    /// Rows from here on are past the report's first errors.
    report_cutoff: u64,
    errors_by_reason: BTreeMap<String, u64>,
    totals: ImportTotals,
}

/// Batches written at once. PostgreSQL's upserts and the consent log were the import's serial
/// part; with four batches in flight they use both cores while the file is read (a million rows:
/// 29-32k rows/s with one batch at a time, 43-44k with two, 48k with three, 52k with four). A
/// repeat across them is found in memory; a batch starts once those older than these are written,
/// so a repeat of an older batch is found in PostgreSQL (a million numbers are not held in memory).
const WRITES_AT_ONCE: usize = 4;

/// A batch being written, with its numbers.
struct Writing {
    phones: HashSet<String>,
    task: JoinHandle<Result<Written, ImportFailure>>,
}

/// What writing one batch did.
struct Written {
    created: u64,
    updated: u64,
    consent_events: u64,
    /// Rows the write refused (duplicates, erased opt-outs), already stored.
    errors: Vec<ImportError>,
}

impl Importer {
    pub fn new(options: ImportOptions) -> Result<Importer, ImportFailure> {
        if options.phone_column.trim().is_empty() {
            return Err(refused("phone", "the phone column must be named"));
        }
        if let Some(c) = &options.consent {
            if !matches!(c.purpose.as_str(), "marketing" | "utility") {
                return Err(refused(
                    "consent_purpose",
                    "purpose is marketing or utility",
                ));
            }
            if !CONSENT_SOURCES.contains(&c.source.as_str()) {
                return Err(refused(
                    "consent_source",
                    format!("source is one of {}", CONSENT_SOURCES.join(", ")),
                ));
            }
        }
        Ok(Importer {
            options: Arc::new(options),
            reader: RecordReader::default(),
            columns: None,
            import_id: Uuid::now_v7(),
            list_id: None,
            row: 0,
            batch: Vec::with_capacity(BATCH),
            errors: Vec::new(),
            writing: VecDeque::new(),
            report_errors: Vec::new(),
            report_cutoff: u64::MAX,
            errors_by_reason: BTreeMap::new(),
            totals: ImportTotals::default(),
        })
    }

    /// Feeds a chunk of the file; an empty chunk ends it.
    pub async fn feed(&mut self, services: &Services, chunk: &[u8]) -> Result<(), ImportFailure> {
        let mut records = Vec::new();
        self.reader.feed(chunk, &mut records)?;
        for record in records {
            if self.columns.is_none() {
                self.columns = Some(self.header(&record)?);
                self.list_id = cstore::create_import(
                    &services.pool,
                    self.import_id,
                    self.options.list.as_deref(),
                    &self.options.actor,
                )
                .await?;
                continue;
            }
            self.row += 1;
            self.take(record);
            if self.batch.len() >= BATCH {
                self.start_write(services).await?;
            }
        }
        Ok(())
    }

    /// Writes what is left and records the import as done (or interrupted, when the upload broke
    /// off: what was written stays, and the import can be run again safely).
    pub async fn finish(
        mut self,
        services: &Services,
        interrupted: bool,
    ) -> Result<ImportReport, ImportFailure> {
        if !interrupted {
            self.feed(services, b"").await?;
        }
        if self.columns.is_none() {
            return Err(refused("", "the file is empty: a header row is needed"));
        }
        self.start_write(services).await?;
        self.written().await?;
        self.report_errors.sort_by_key(|e| e.row);
        self.report_errors.truncate(ERRORS_IN_REPORT);
        if self.totals.created + self.totals.updated >= FRESH_STATISTICS_AFTER {
            // Audiences page through contacts by tag, attribute or list; with statistics from
            // before a bulk load the planner walks the tag index for every page (quadratic in
            // the audience) instead of the primary key once. Autovacuum would get there later.
            cstore::refresh_statistics(&services.pool).await?;
        }
        cstore::finish_import(
            &services.pool,
            self.import_id,
            &self.totals,
            if interrupted { "interrupted" } else { "done" },
        )
        .await?;
        Ok(ImportReport {
            import_id: self.import_id,
            list_id: self.list_id,
            totals: self.totals,
            errors_by_reason: self.errors_by_reason,
            errors: self.report_errors,
            interrupted,
        })
    }

    fn header(&self, record: &[String]) -> Result<Columns, ImportFailure> {
        let names: Vec<String> = record.iter().map(|h| h.trim().to_string()).collect();
        let mut seen = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(refused(
                    "header",
                    format!("column {} of the header has no name", i + 1),
                ));
            }
            if !crate::domain::text::storable(name) {
                return Err(refused(
                    "header",
                    format!(
                        "column {} of the header: {}",
                        i + 1,
                        crate::domain::text::NUL_MESSAGE
                    ),
                ));
            }
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(refused(
                    "header",
                    format!("the header names column {name} twice"),
                ));
            }
        }
        let find = |field: &str, name: &str| -> Result<usize, ImportFailure> {
            names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    refused(
                        field,
                        format!(
                            "the header has no column {name} (columns: {})",
                            names.join(", ")
                        ),
                    )
                })
        };
        let o = &self.options;
        let phone = find("phone", &o.phone_column)?;
        let optional =
            |field: &str, name: &Option<String>| -> Result<Option<usize>, ImportFailure> {
                name.as_ref().map(|n| find(field, n)).transpose()
            };
        let name = optional("name", &o.name_column)?;
        let language = optional("language", &o.language_column)?;
        let tags = optional("tags_column", &o.tags_column)?;
        let consent = optional(
            "consent_column",
            &o.consent.as_ref().map(|c| c.column.clone()),
        )?;
        let evidence = optional(
            "evidence_column",
            &o.consent.as_ref().and_then(|c| c.evidence_column.clone()),
        )?;
        let mapped: HashSet<usize> = [Some(phone), name, language, tags, consent, evidence]
            .into_iter()
            .flatten()
            .collect();
        let mut attributes = Vec::new();
        for wanted in &o.attribute_columns {
            if wanted == "*" {
                for (i, n) in names.iter().enumerate() {
                    if !mapped.contains(&i) && !attributes.iter().any(|(j, _)| *j == i) {
                        attributes.push((i, n.clone()));
                    }
                }
            } else {
                let i = find("attributes", wanted)?;
                attributes.push((i, names[i].clone()));
            }
        }
        Ok(Columns {
            count: names.len(),
            phone,
            name,
            language,
            tags,
            attributes,
            consent,
            evidence,
        })
    }

    fn error(&mut self, row: u64, reason: &str, field: Option<&str>, value: Option<&str>) {
        let e = import_error(row, reason, field, value);
        self.count_error(&e);
        self.errors.push(e);
    }

    /// Counts an error and keeps it for the report if it is among the first by row number (a
    /// batch's own errors arrive after the next batch's rows were read).
    fn count_error(&mut self, e: &ImportError) {
        *self.errors_by_reason.entry(e.reason.clone()).or_default() += 1;
        self.totals.errors += 1;
        if self.report_errors.len() < ERRORS_IN_REPORT || e.row < self.report_cutoff {
            self.report_errors.push(e.clone());
            if self.report_errors.len() >= 2 * ERRORS_IN_REPORT {
                self.report_errors.sort_by_key(|e| e.row);
                self.report_errors.truncate(ERRORS_IN_REPORT);
                self.report_cutoff = self.report_errors.last().map_or(u64::MAX, |e| e.row);
            }
        }
    }

    /// Checks one data row; a good one joins the batch, a bad one becomes an error.
    fn take(&mut self, record: Vec<String>) {
        self.totals.rows += 1;
        let Some(c) = &self.columns else { return };
        if record.len() != c.count {
            let message = format!("{} fields, the header has {}", record.len(), c.count);
            self.error(self.row, "bad_column", None, Some(&message));
            return;
        }
        if let Some(i) = record
            .iter()
            .position(|cell| !crate::domain::text::storable(cell))
        {
            let column = format!("column {}", i + 1);
            let code = crate::domain::text::NUL_CODE;
            self.error(self.row, code, Some(&column), None);
            return;
        }
        let field = |i: Option<usize>| {
            i.map(|i| record[i].trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let raw_phone = record[c.phone].trim().to_string();
        let number = match phone::normalize(&raw_phone) {
            Ok(n) => n,
            Err(_) => {
                let reason = if raw_phone.is_empty() {
                    "missing_phone_number"
                } else {
                    "invalid_phone_number"
                };
                let column = self.options.phone_column.clone();
                self.error(self.row, reason, Some(&column), Some(&raw_phone));
                return;
            }
        };
        let language = field(c.language);
        if let Some(lang) = &language
            && !valid_language(lang)
        {
            let column = self.options.language_column.clone().unwrap_or_default();
            self.error(self.row, "bad_column", Some(&column), Some(lang));
            return;
        }
        let mut tags = self.options.tags.clone();
        if let Some(extra) = field(c.tags) {
            tags.extend(
                extra
                    .split(';')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            );
        }
        let mut attributes = Map::new();
        for (i, name) in &c.attributes {
            let v = record[*i].trim();
            if !v.is_empty() {
                attributes.insert(name.clone(), Value::String(v.to_string()));
            }
        }
        let mut consent = None;
        if let (Some(options), Some(i)) = (&self.options.consent, c.consent) {
            let raw = record[i].trim().to_ascii_lowercase();
            let action = match raw.as_str() {
                "" => None,
                "yes" | "y" | "si" | "sí" | "true" | "1" | "opt_in" | "opt-in" => {
                    Some(ConsentAction::OptIn)
                }
                "no" | "n" | "false" | "0" | "opt_out" | "opt-out" => Some(ConsentAction::OptOut),
                _ => {
                    let column = options.column.clone();
                    self.error(self.row, "bad_column", Some(&column), Some(&raw));
                    return;
                }
            };
            if let Some(action) = action {
                let evidence = field(c.evidence).or_else(|| options.evidence.clone());
                match (action, evidence) {
                    (ConsentAction::OptIn, None) => {
                        let column = options.evidence_column.clone().unwrap_or("evidence".into());
                        self.error(self.row, "missing_evidence", Some(&column), None);
                        return;
                    }
                    (action, evidence) => {
                        consent = Some((action, evidence.unwrap_or_else(|| "import".into())));
                    }
                }
            }
        }
        let row = self.row;
        self.batch.push((
            row,
            ContactInput {
                phone: number.digits().to_string(),
                name: field(c.name),
                language,
                country: number.country().to_string(),
                attributes: Value::Object(attributes),
                tags,
            },
            consent,
        ));
    }

    /// Starts writing the rows read since the last batch, once fewer than [`WRITES_AT_ONCE`]
    /// are being written. A number already in a batch being written, or earlier in this one, is
    /// a duplicate here; one in a batch already written is found by [`write_batch`].
    async fn start_write(&mut self, services: &Services) -> Result<(), ImportFailure> {
        while self.writing.len() >= WRITES_AT_ONCE {
            self.written_oldest().await?;
        }
        let batch = std::mem::take(&mut self.batch);
        let mut phones = HashSet::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        for (row, contact, consent) in batch {
            let repeated = self
                .writing
                .iter()
                .any(|w| w.phones.contains(&contact.phone))
                || !phones.insert(contact.phone.clone());
            if repeated {
                let column = self.options.phone_column.clone();
                self.error(row, "duplicate", Some(&column), Some(&contact.phone));
            } else {
                rows.push((row, contact, consent));
            }
        }
        let errors = std::mem::take(&mut self.errors);
        if rows.is_empty() && errors.is_empty() {
            return Ok(());
        }
        let target = Target {
            import_id: self.import_id,
            list_id: self.list_id,
            options: self.options.clone(),
        };
        let services = services.clone();
        let task = tokio::spawn(async move { write_batch(&services, &target, rows, errors).await });
        self.writing.push_back(Writing { phones, task });
        Ok(())
    }

    /// Waits for every batch being written.
    async fn written(&mut self) -> Result<(), ImportFailure> {
        while !self.writing.is_empty() {
            self.written_oldest().await?;
        }
        Ok(())
    }

    /// Waits for the oldest batch being written and adds what it did to the totals.
    async fn written_oldest(&mut self) -> Result<(), ImportFailure> {
        let Some(writing) = self.writing.pop_front() else {
            return Ok(());
        };
        let written = writing
            .task
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        self.totals.created += written.created;
        self.totals.updated += written.updated;
        self.totals.consent_events += written.consent_events;
        for e in &written.errors {
            self.count_error(e);
        }
        Ok(())
    }
}

fn import_error(row: u64, reason: &str, field: Option<&str>, value: Option<&str>) -> ImportError {
    ImportError {
        row,
        reason: reason.into(),
        field: field.map(str::to_string),
        value: value.map(|v| v.chars().take(200).collect()),
    }
}

/// Where a batch is written.
struct Target {
    import_id: Uuid,
    list_id: Option<Uuid>,
    options: Arc<ImportOptions>,
}

/// Writes one batch of checked rows, each number once: contacts (the first row of a number in the
/// file wins), consent changes with their evidence, and the row errors, those found before
/// (`errors`) and those found here.
async fn write_batch(
    services: &Services,
    target: &Target,
    batch: Vec<Row>,
    mut errors: Vec<ImportError>,
) -> Result<Written, ImportFailure> {
    let options = &target.options;
    let mut found = Vec::new();
    // A number an earlier batch of the file wrote: the first row wins.
    let phones: Vec<String> = batch.iter().map(|(_, c, _)| c.phone.clone()).collect();
    let earlier: HashSet<String> =
        cstore::touched_by_import(&services.pool, target.import_id, &phones)
            .await?
            .into_iter()
            .collect();
    let mut rows = Vec::with_capacity(batch.len());
    let mut consents = Vec::new();
    for (row, contact, consent) in batch {
        if earlier.contains(&contact.phone) {
            let column = options.phone_column.as_str();
            found.push(import_error(
                row,
                "duplicate",
                Some(column),
                Some(&contact.phone),
            ));
            continue;
        }
        if let Some(c) = consent {
            consents.push((row, contact.phone.clone(), c));
        }
        rows.push(contact);
    }
    if let Some(consent) = &options.consent {
        // An opt-in for someone erased after opting out must come from them again, not from
        // a list imported again: refused, row by row.
        let opting_in: Vec<&str> = consents
            .iter()
            .filter(|(_, _, (action, _))| *action == ConsentAction::OptIn)
            .map(|(_, phone, _)| phone.as_str())
            .collect();
        let refused =
            crate::privacy::erased_opted_out(services, &opting_in, &consent.purpose).await?;
        consents.retain(|(row, phone, (action, _))| {
            let erased = *action == ConsentAction::OptIn && refused.contains(phone);
            if erased {
                found.push(import_error(
                    *row,
                    "erased_opted_out",
                    Some(&consent.column),
                    Some(phone),
                ));
            }
            !erased
        });
    }
    let mut written = Written {
        created: 0,
        updated: 0,
        consent_events: 0,
        errors: Vec::new(),
    };
    if !rows.is_empty() {
        let (created, updated, _) =
            cstore::upsert_contacts(&services.pool, target.import_id, target.list_id, &rows)
                .await?;
        written.created = created;
        written.updated = updated;
        services
            .metrics
            .contacts_imported
            .with_label_values(&["created"])
            .inc_by(created);
        services
            .metrics
            .contacts_imported
            .with_label_values(&["updated"])
            .inc_by(updated);
    }
    if let (Some(consent), false) = (&options.consent, consents.is_empty()) {
        // Only changes are appended: importing the same file again adds nothing to the log.
        let recipients: Vec<&str> = consents.iter().map(|(_, p, _)| p.as_str()).collect();
        let current = services
            .state
            .audience_states(&recipients)
            .await
            .map_err(AppError::from)?;
        let events: Vec<ConsentEvent> = consents
            .iter()
            .zip(current)
            .filter(|((_, _, (action, _)), (state, _))| {
                let now = match consent.purpose.as_str() {
                    "marketing" => state.marketing,
                    _ => state.utility,
                };
                now != Some(*action)
            })
            .map(|((_, phone, (action, evidence)), _)| ConsentEvent {
                recipient: phone.clone(),
                purpose: consent.purpose.clone(),
                action: action.as_str().into(),
                source: consent.source.clone(),
                evidence: Some(evidence.clone()),
                actor: Some(options.actor.clone()),
            })
            .collect();
        if !events.is_empty() {
            services.record_consent(&events).await?;
            written.consent_events = events.len() as u64;
        }
    }
    errors.extend(found.iter().cloned());
    cstore::insert_import_errors(&services.pool, target.import_id, &errors).await?;
    services
        .metrics
        .contacts_imported
        .with_label_values(&["error"])
        .inc_by(errors.len() as u64);
    written.errors = found;
    Ok(written)
}

/// `es`, `es_MX`, `pt_BR`, `en_US`: what WhatsApp template languages look like.
fn valid_language(raw: &str) -> bool {
    let (lang, region) = match raw.split_once('_') {
        Some((l, r)) => (l, Some(r)),
        None => (raw, None),
    };
    (2..=3).contains(&lang.len())
        && lang.chars().all(|c| c.is_ascii_lowercase())
        && region.is_none_or(|r| {
            (2..=4).contains(&r.len()) && r.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

// -- consent cache -----------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildReport {
    pub recipients: u64,
    /// Recipients whose Redis copy differed from PostgreSQL's log (now fixed).
    pub differences: u64,
    /// Consent copies in Redis with no event in PostgreSQL (now removed).
    pub extra_in_redis: u64,
    /// A few of the differences: recipient, what Redis had, what the log says.
    pub examples: Vec<Value>,
}

/// Rewrites Redis's consent copy from the log in PostgreSQL and reports what differed.
pub async fn rebuild_consent_cache(services: &Services) -> Result<RebuildReport, AppError> {
    let mut report = RebuildReport::default();
    let mut after = String::new();
    let mut known = HashSet::new();
    loop {
        let rows = cstore::current_consent_page(&services.pool, &after, 1000).await?;
        if rows.is_empty() {
            break;
        }
        let mut by_recipient: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        for (recipient, purpose, action) in rows {
            let entry = by_recipient.entry(recipient).or_default();
            match purpose.as_str() {
                "marketing" => entry.0 = Some(action),
                _ => entry.1 = Some(action),
            }
        }
        let recipients: Vec<String> = by_recipient.keys().cloned().collect();
        let cached = services.state.consent_raw(&recipients).await?;
        let mut fix = Vec::new();
        for ((recipient, truth), have) in by_recipient.into_iter().zip(cached) {
            report.recipients += 1;
            if have != truth {
                report.differences += 1;
                if report.examples.len() < 20 {
                    report.examples.push(serde_json::json!({
                        "recipient": recipient,
                        "redis": {"marketing": have.0, "utility": have.1},
                        "postgresql": {"marketing": truth.0, "utility": truth.1},
                    }));
                }
                fix.push((recipient.clone(), truth.0, truth.1));
            }
            after = recipient.clone();
            known.insert(recipient);
        }
        services.state.replace_consent(&fix).await?;
    }
    let cached: Vec<String> = services.state.consent_recipients().await?;
    let extra: Vec<(String, Option<String>, Option<String>)> = cached
        .into_iter()
        .filter(|r| !known.contains(r))
        .map(|r| (r, None, None))
        .collect();
    report.extra_in_redis = extra.len() as u64;
    services.state.replace_consent(&extra).await?;
    Ok(report)
}

/// The header and fields of the contacts export.
/// A contact's profile as the JSON API takes it (`PUT /v1/contacts/{phone}`): the whole profile,
/// so an absent field is cleared.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactProfile {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub attributes: Option<Map<String, Value>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

const MAX_NAME: usize = 200;
const MAX_TAG: usize = 64;
const MAX_TAGS: usize = 100;
const MAX_ATTRIBUTES: usize = 100;

/// Checks and normalises one contact from the JSON API: the same rules as an import row, plus
/// attribute values limited to what a template variable can use (text, numbers, true/false).
pub fn contact_input(raw_phone: &str, p: ContactProfile) -> Result<ContactInput, Refusal> {
    let fail =
        |code: &'static str, field: &str, message: String| Refusal::invalid(code, field, message);
    let number = phone::normalize(raw_phone)
        .map_err(|e| fail("invalid_phone_number", "phone", e.to_string()))?;
    let name = p
        .name
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME) {
        return Err(fail(
            "invalid_field",
            "name",
            format!("name has at most {MAX_NAME} characters"),
        ));
    }
    let language = p.language.map(|l| l.trim().to_string());
    if let Some(l) = &language
        && !valid_language(l)
    {
        return Err(fail(
            "invalid_field",
            "language",
            format!("{l:?} is not a language code like es or es_MX"),
        ));
    }
    let attributes = p.attributes.unwrap_or_default();
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(fail(
            "invalid_field",
            "attributes",
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    for (key, value) in &attributes {
        if key.trim().is_empty() {
            return Err(fail(
                "invalid_field",
                "attributes",
                "attribute names are not empty".into(),
            ));
        }
        if !matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(fail(
                "invalid_field",
                &format!("attributes.{key}"),
                "attribute values are text, numbers or true/false".into(),
            ));
        }
    }
    let mut tags: Vec<String> = Vec::new();
    for (i, tag) in p.tags.unwrap_or_default().iter().enumerate() {
        let tag = tag.trim();
        if tag.is_empty() || tag.chars().count() > MAX_TAG || tag.contains(';') {
            return Err(fail(
                "invalid_field",
                &format!("tags[{i}]"),
                format!("a tag has 1 to {MAX_TAG} characters and no ';'"),
            ));
        }
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_string());
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(fail(
            "invalid_field",
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    tags.sort();
    Ok(ContactInput {
        phone: number.digits().to_string(),
        name,
        language,
        country: number.country().to_string(),
        attributes: Value::Object(attributes),
        tags,
    })
}

pub fn contact_csv_header() -> String {
    crate::domain::csv::line([
        "phone",
        "name",
        "language",
        "country",
        "tags",
        "attributes",
        "created_at",
        "updated_at",
    ])
}

pub fn contact_csv_line(c: &cstore::ContactRow) -> String {
    let tags = c.tags.join(";");
    let attributes = c.attributes.0.to_string();
    let created = c.created_at.to_rfc3339();
    let updated = c.updated_at.to_rfc3339();
    crate::domain::csv::line([
        c.phone.as_str(),
        c.name.as_deref().unwrap_or(""),
        c.language.as_deref().unwrap_or(""),
        c.country.as_str(),
        tags.as_str(),
        attributes.as_str(),
        created.as_str(),
        updated.as_str(),
    ])
}

pub fn consent_csv_header() -> String {
    crate::domain::csv::line([
        "id",
        "recipient",
        "purpose",
        "action",
        "source",
        "evidence",
        "actor",
        "created_at",
    ])
}

pub fn consent_csv_line(e: &crate::store::ConsentRecord) -> String {
    let id = e.id.to_string();
    let at = e.created_at.to_rfc3339();
    crate::domain::csv::line([
        id.as_str(),
        e.recipient.as_str(),
        e.purpose.as_str(),
        e.action.as_str(),
        e.source.as_str(),
        e.evidence.as_deref().unwrap_or(""),
        e.actor.as_deref().unwrap_or(""),
        at.as_str(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_look_like_whatsapp_codes() {
        assert!(valid_language("es"));
        assert!(valid_language("es_419"));
        assert!(valid_language("es_MX"));
        assert!(valid_language("pt_BR"));
        assert!(!valid_language("Spanish"));
        assert!(!valid_language("e"));
    }

    #[test]
    fn a_json_profile_is_normalised_like_an_import_row() {
        let profile: ContactProfile = serde_json::from_value(serde_json::json!({
            "name": "  Ana  ", "language": "es_MX",
            "attributes": {"coupon": "A1", "points": 3, "vip": true},
            "tags": ["nov", " vip ", "nov"]
        }))
        .unwrap();
        let c = contact_input("+52 1 55 1000 0001", profile).unwrap();
        assert_eq!(c.phone, "5215510000001");
        assert_eq!(c.country, "MX");
        assert_eq!(c.name.as_deref(), Some("Ana"));
        assert_eq!(c.tags, vec!["nov".to_string(), "vip".to_string()]);
        assert_eq!(c.attributes["points"], 3);
        let empty = contact_input("5215510000001", ContactProfile::default()).unwrap();
        assert_eq!(empty.name, None);
        assert!(empty.tags.is_empty());
    }

    #[test]
    fn a_bad_profile_names_the_field() {
        let field = |phone: &str, json: serde_json::Value| {
            let profile: ContactProfile = serde_json::from_value(json).unwrap();
            contact_input(phone, profile).unwrap_err()
        };
        let e = field("12", serde_json::json!({}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_phone_number", Some("phone"))
        );
        let e = field("5215510000001", serde_json::json!({"language": "Spanish"}));
        assert_eq!(e.field.as_deref(), Some("language"));
        let e = field(
            "5215510000001",
            serde_json::json!({"attributes": {"address": {"city": "CDMX"}}}),
        );
        assert_eq!(e.field.as_deref(), Some("attributes.address"));
        let e = field("5215510000001", serde_json::json!({"tags": ["ok", ""]}));
        assert_eq!(e.field.as_deref(), Some("tags[1]"));
        let e = field(
            "5215510000001",
            serde_json::json!({"name": "x".repeat(MAX_NAME + 1)}),
        );
        assert_eq!(e.field.as_deref(), Some("name"));
        assert!(
            serde_json::from_value::<ContactProfile>(serde_json::json!({"nmae": "Ana"})).is_err()
        );
    }
}
