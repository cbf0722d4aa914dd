-- Webhooks in (raw events, statuses, inbound messages, health) and lifecycle events out.

-- Every POST to /webhooks/whatsapp with a valid signature, stored before it is acknowledged.
CREATE TABLE webhook_events (
    id           BIGSERIAL PRIMARY KEY,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    body         BYTEA NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'processed', 'malformed', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    claimed_until TIMESTAMPTZ,         -- a processor is working on it until then
    updates      INTEGER,              -- updates found in the body, once processed
    unknown      INTEGER,              -- updates of a kind or shape pregon does not act on
    error        TEXT,
    processed_at TIMESTAMPTZ
);
CREATE INDEX webhook_events_pending ON webhook_events (id) WHERE state = 'pending';

-- Updates pregon stored but does not act on (unknown field or update kind), for inspection.
CREATE TABLE webhook_unknown (
    id         BIGSERIAL PRIMARY KEY,
    event_id   BIGINT NOT NULL REFERENCES webhook_events (id),
    field      TEXT NOT NULL,
    value      JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Message states grow: delivered and read come from webhooks; cancelled from campaigns.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('queued', 'deferred', 'sent', 'delivered', 'read', 'failed', 'skipped', 'cancelled'));
ALTER TABLE messages
    ADD COLUMN body             TEXT,  -- the Cloud API body, to send again after 131049 or a retry
    ADD COLUMN delivered_at     TIMESTAMPTZ,
    ADD COLUMN read_at          TIMESTAMPTZ,
    ADD COLUMN failed_at        TIMESTAMPTZ,
    ADD COLUMN replied_at       TIMESTAMPTZ,
    ADD COLUMN pricing_model    TEXT,
    ADD COLUMN pricing_type     TEXT,  -- regular / free_customer_service / free_entry_point
    ADD COLUMN pricing_category TEXT,
    ADD COLUMN billable         BOOLEAN;

-- Each status Meta reported, once per (wamid, status): the dedupe key of Meta's retries.
-- A status that arrives before pregon recorded the send waits here (applied_at NULL).
CREATE TABLE message_statuses (
    id          BIGSERIAL PRIMARY KEY,
    wamid       TEXT NOT NULL,
    status      TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    recipient   TEXT,
    error_code  BIGINT,
    error_title TEXT,
    failure_reason TEXT,               -- for a failed status: what its code means (domain::webhook)
    pricing     JSONB,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_at  TIMESTAMPTZ,           -- folded into the message row
    effects_done BOOLEAN NOT NULL DEFAULT FALSE, -- suppression / opt-out / retry taken care of
    UNIQUE (wamid, status)
);
CREATE INDEX message_statuses_unapplied ON message_statuses (id) WHERE applied_at IS NULL;

-- Recipients Meta reports as not on WhatsApp (131026), refused at enqueue when suppression is on.
CREATE TABLE suppressions (
    recipient  TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    evidence   TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What customers wrote, once per inbound wamid.
CREATE TABLE inbound_messages (
    wamid           TEXT PRIMARY KEY,
    sender          TEXT NOT NULL,       -- our phone_number_id that received it
    recipient       TEXT NOT NULL,       -- the customer (wa_id)
    message_type    TEXT NOT NULL,
    text            TEXT,
    payload         TEXT,                -- quick-reply payload or interactive reply id
    context_wamid   TEXT,                -- the message it replies to
    reply_to        UUID,                -- our message it replies to, when known
    referral        JSONB,
    opted_out       BOOLEAN NOT NULL DEFAULT FALSE,
    handled         BOOLEAN NOT NULL DEFAULT FALSE, -- window, opt-out, reply link and events done
    occurred_at     TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX inbound_messages_reply_to ON inbound_messages (reply_to) WHERE reply_to IS NOT NULL;

-- Sender health from webhooks, and who paused a sender (an operator's pause is never lifted by a
-- webhook; pregon's own pause is lifted when Meta reports the number healthy again).
ALTER TABLE senders
    ADD COLUMN waba_id     TEXT,
    ADD COLUMN pause_source TEXT CHECK (pause_source IN ('operator', 'cloud_api', 'webhook'));
CREATE INDEX senders_display ON senders (display_phone_number);

-- Template health from webhooks; a category change is kept as history (it changes the price).
ALTER TABLE templates
    ADD COLUMN template_id   TEXT,
    ADD COLUMN quality       TEXT NOT NULL DEFAULT 'UNKNOWN',
    ADD COLUMN status_reason TEXT;
CREATE TABLE template_changes (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT NOT NULL,
    language   TEXT NOT NULL,
    change     TEXT NOT NULL,          -- status / quality / category
    old_value  TEXT,
    new_value  TEXT NOT NULL,
    reason     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Lifecycle events waiting to be published (transactional outbox): written in the same statement
-- as the change they describe, published to RabbitMQ and fanned out to callbacks, then deleted.
CREATE TABLE event_outbox (
    id          BIGSERIAL PRIMARY KEY,
    event_type  TEXT NOT NULL,          -- e.g. message.delivered
    routing_key TEXT NOT NULL,          -- e.g. message.delivered.utility
    api_key_id  UUID,                   -- whose message it is, for callback subscriptions
    payload     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- HTTP callback subscriptions, per API key.
CREATE TABLE subscriptions (
    id          UUID PRIMARY KEY,
    api_key_id  UUID NOT NULL REFERENCES api_keys (id),
    url         TEXT NOT NULL,
    events      TEXT[] NOT NULL,        -- event types, or '*' for all
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);

CREATE TABLE callback_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    subscription_id UUID NOT NULL REFERENCES subscriptions (id),
    event_type      TEXT NOT NULL,
    payload         JSONB NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'gave_up')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_attempt_at TIMESTAMPTZ,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX callback_deliveries_due ON callback_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX callback_deliveries_subscription ON callback_deliveries (subscription_id, id DESC);
