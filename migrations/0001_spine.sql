-- The dispatch spine: senders, templates, consent, API keys, messages and refused ingest.

CREATE TABLE senders (
    phone_number_id       TEXT PRIMARY KEY,
    business_portfolio_id TEXT NOT NULL,
    display_phone_number  TEXT,
    tier                  BIGINT NOT NULL DEFAULT 250,      -- unique recipients per 24 h, -1 = unlimited
    quality               TEXT NOT NULL DEFAULT 'GREEN',    -- GREEN / YELLOW / RED / NA
    status                TEXT NOT NULL DEFAULT 'CONNECTED',-- Meta's status; must be CONNECTED to send
    paused                BOOLEAN NOT NULL DEFAULT FALSE,   -- paused by pregon (account error) or an operator
    paused_reason         TEXT,
    mps                   INTEGER NOT NULL DEFAULT 80 CHECK (mps BETWEEN 1 AND 1000),
    tier_spread_seconds   INTEGER CHECK (tier_spread_seconds > 0), -- spread the daily budget over this period
    access_token          TEXT NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE templates (
    name       TEXT NOT NULL,
    language   TEXT NOT NULL,
    category   TEXT NOT NULL CHECK (category IN ('marketing', 'utility', 'authentication')),
    status     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, language)
);

-- Consent is an append-only log; the current state is the latest event per recipient and purpose.
CREATE TABLE consent_events (
    id         BIGSERIAL PRIMARY KEY,
    recipient  TEXT NOT NULL,
    purpose    TEXT NOT NULL CHECK (purpose IN ('marketing', 'utility')),
    action     TEXT NOT NULL CHECK (action IN ('opt_in', 'opt_out')),
    source     TEXT NOT NULL,
    evidence   TEXT,
    actor      TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_latest ON consent_events (recipient, purpose, id DESC);

CREATE FUNCTION consent_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'consent_events is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER consent_events_no_rewrite
    BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_events_append_only();

CREATE TABLE api_keys (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'service', 'viewer')),
    senders    TEXT[],                 -- NULL: every sender
    key_hash   BYTEA NOT NULL UNIQUE,  -- SHA-256 of the secret; the secret itself is never stored
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE TABLE messages (
    id                UUID PRIMARY KEY,
    idempotency_key   TEXT UNIQUE,     -- scoped by the API key that gave it
    api_key_id        UUID,
    sender            TEXT NOT NULL,
    recipient         TEXT NOT NULL,
    category          TEXT NOT NULL,
    message_type      TEXT NOT NULL,
    template_name     TEXT,
    template_language TEXT,
    delivery          TEXT NOT NULL DEFAULT 'at_most_once',
    status            TEXT NOT NULL CHECK (status IN ('queued', 'deferred', 'sent', 'failed', 'skipped')),
    status_reason     TEXT,
    wamid             TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error_code   BIGINT,
    last_error        TEXT,
    not_before        TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at           TIMESTAMPTZ
);
CREATE INDEX messages_sender_status ON messages (sender, status);
CREATE INDEX messages_wamid ON messages (wamid) WHERE wamid IS NOT NULL;

-- Requests published straight to RabbitMQ that failed validation: kept with the reason, never dropped.
CREATE TABLE ingest_refusals (
    id          BIGSERIAL PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    code        TEXT NOT NULL,
    field       TEXT,
    reason      TEXT NOT NULL,
    payload     TEXT NOT NULL
);
