-- Campaigns for marketing: contacts, lists, imports, the template registry's parameters,
-- campaigns with a persisted fan-out cursor, and progress counters kept by a trigger.

CREATE TABLE contacts (
    id          BIGSERIAL PRIMARY KEY,
    phone       TEXT NOT NULL UNIQUE,          -- E.164 digits, the same person imported twice is one row
    name        TEXT,
    language    TEXT,
    country     TEXT NOT NULL,                 -- derived from the number
    attributes  JSONB NOT NULL DEFAULT '{}',
    tags        TEXT[] NOT NULL DEFAULT '{}',
    last_import UUID,                          -- the import that last touched it (duplicate detection)
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX contacts_tags ON contacts USING GIN (tags);

-- A named set of contacts, made by an import; a campaign audience may be one list.
CREATE TABLE contact_lists (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE contact_list_members (
    list_id    UUID NOT NULL REFERENCES contact_lists (id),
    contact_id BIGINT NOT NULL REFERENCES contacts (id),
    PRIMARY KEY (list_id, contact_id)
);

CREATE TABLE contact_imports (
    id             UUID PRIMARY KEY,
    list_id        UUID REFERENCES contact_lists (id),
    state          TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'interrupted')),
    rows           BIGINT NOT NULL DEFAULT 0,
    created        BIGINT NOT NULL DEFAULT 0,
    updated        BIGINT NOT NULL DEFAULT 0,
    errors         BIGINT NOT NULL DEFAULT 0,
    consent_events BIGINT NOT NULL DEFAULT 0,
    actor          TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);
CREATE TABLE contact_import_errors (
    import_id  UUID NOT NULL REFERENCES contact_imports (id),
    row_number BIGINT NOT NULL,
    reason     TEXT NOT NULL,                 -- invalid_phone_number / duplicate / bad_column / ...
    field      TEXT,
    value      TEXT,
    PRIMARY KEY (import_id, row_number, reason)
);

ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'service', 'marketing', 'viewer'));

-- What each template needs: its components as Meta lists them and the parameter slots derived
-- from them ("header.1", "body.1", "button.0.1", or named ones like "body.first_name").
ALTER TABLE templates
    ADD COLUMN components JSONB,
    ADD COLUMN parameters TEXT[] NOT NULL DEFAULT '{}';

CREATE TABLE campaigns (
    id                UUID PRIMARY KEY,
    name              TEXT NOT NULL,
    template_name     TEXT NOT NULL,
    template_language TEXT NOT NULL,
    category          TEXT NOT NULL,
    senders           TEXT[] NOT NULL,
    audience          JSONB NOT NULL,
    variables         JSONB NOT NULL DEFAULT '{}',
    start_at          TIMESTAMPTZ,
    quiet_hours       JSONB,                  -- {"start": "21:00", "end": "09:00"} in the recipient's time
    end_by            TIMESTAMPTZ,
    rate_cap          INTEGER CHECK (rate_cap > 0),
    state             TEXT NOT NULL DEFAULT 'draft'
                      CHECK (state IN ('draft', 'scheduled', 'running', 'paused', 'completed', 'cancelled')),
    paused_by         TEXT CHECK (paused_by IN ('operator', 'auto')),
    pause_causes      TEXT[] NOT NULL DEFAULT '{}',
    planned           BOOLEAN NOT NULL DEFAULT FALSE, -- the audience is fully written as messages
    plan_cursor       BIGINT NOT NULL DEFAULT 0,      -- audience position planned through
    recipients        BIGINT NOT NULL DEFAULT 0,      -- messages planned
    exclusions        JSONB NOT NULL DEFAULT '{}',    -- reason -> count, from planning
    fanout_claimed    BIGINT NOT NULL DEFAULT 0,      -- marked queued through this seq
    fanout_cursor     BIGINT NOT NULL DEFAULT 0,      -- published (confirmed) through this seq
    lease_owner       TEXT,
    lease_until       TIMESTAMPTZ,
    api_key_id        UUID,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    launched_at       TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_active ON campaigns (state) WHERE state IN ('scheduled', 'running');

-- Every launch, pause, resume, cancel and completion, with its cause and who did it.
CREATE TABLE campaign_events (
    id          BIGSERIAL PRIMARY KEY,
    campaign_id UUID NOT NULL REFERENCES campaigns (id),
    event       TEXT NOT NULL,
    cause       TEXT,
    actor       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX campaign_events_campaign ON campaign_events (campaign_id, id);

-- Recipients left out while planning (never messages): reason and the number as given.
CREATE TABLE campaign_exclusions (
    campaign_id UUID NOT NULL REFERENCES campaigns (id),
    recipient   TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX campaign_exclusions_campaign ON campaign_exclusions (campaign_id);

-- A campaign's messages are written at planning as 'planned' and queued by the fan-out.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check
    CHECK (status IN ('planned', 'queued', 'deferred', 'sent', 'delivered', 'read', 'failed', 'skipped',
                      'cancelled'));
ALTER TABLE messages
    ADD COLUMN campaign_id  UUID,
    ADD COLUMN campaign_seq BIGINT;
-- One message per recipient per campaign: the structural guard against sending twice.
CREATE UNIQUE INDEX messages_campaign_recipient ON messages (campaign_id, recipient)
    WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_campaign_seq ON messages (campaign_id, campaign_seq)
    WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_campaign_planned ON messages (campaign_id, campaign_seq)
    WHERE status = 'planned';

-- Progress counters per campaign, by state and detail (failure code, skip or defer reason), kept
-- by statement-level triggers so a progress read costs a handful of rows, whatever the size.
CREATE TABLE campaign_counts (
    campaign_id UUID NOT NULL,
    status      TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    n           BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, status, detail)
);

CREATE FUNCTION campaign_count_detail(status TEXT, reason TEXT, code BIGINT) RETURNS TEXT AS $$
    SELECT CASE
        WHEN status = 'failed' THEN COALESCE(code::text, reason, '')
        WHEN status IN ('skipped', 'deferred', 'cancelled') THEN COALESCE(reason, '')
        ELSE '' END
$$ LANGUAGE sql IMMUTABLE;

CREATE FUNCTION campaign_counts_on_insert() RETURNS trigger AS $$
BEGIN
    INSERT INTO campaign_counts AS cc (campaign_id, status, detail, n)
    SELECT campaign_id, status, campaign_count_detail(status, status_reason, last_error_code), count(*)
    FROM new_rows WHERE campaign_id IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, status, detail) DO UPDATE SET n = cc.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION campaign_counts_on_update() RETURNS trigger AS $$
BEGIN
    INSERT INTO campaign_counts AS cc (campaign_id, status, detail, n)
    SELECT campaign_id, status, detail, sum(d) FROM (
        SELECT n.campaign_id, n.status,
               campaign_count_detail(n.status, n.status_reason, n.last_error_code) AS detail, 1 AS d
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.campaign_id IS NOT NULL
          AND (n.status, campaign_count_detail(n.status, n.status_reason, n.last_error_code))
              IS DISTINCT FROM (o.status, campaign_count_detail(o.status, o.status_reason, o.last_error_code))
        UNION ALL
        SELECT o.campaign_id, o.status,
               campaign_count_detail(o.status, o.status_reason, o.last_error_code), -1
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE o.campaign_id IS NOT NULL
          AND (n.status, campaign_count_detail(n.status, n.status_reason, n.last_error_code))
              IS DISTINCT FROM (o.status, campaign_count_detail(o.status, o.status_reason, o.last_error_code))
        UNION ALL
        SELECT n.campaign_id, 'replied', '', 1
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.campaign_id IS NOT NULL AND n.replied_at IS NOT NULL AND o.replied_at IS NULL
    ) deltas
    GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, status, detail) DO UPDATE SET n = cc.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER messages_campaign_counts_insert
    AFTER INSERT ON messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_counts_on_insert();
CREATE TRIGGER messages_campaign_counts_update
    AFTER UPDATE ON messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_counts_on_update();
