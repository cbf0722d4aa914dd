-- Erasure: a person's data is removed on request; what stays is a hash of their number and
-- whether they had opted out, so an opt-out survives the erasure (an old list imported again
-- cannot opt them back in).
CREATE TABLE erasures (
    identity_hash       BYTEA PRIMARY KEY,
    marketing_opted_out BOOLEAN NOT NULL,
    utility_opted_out   BOOLEAN NOT NULL,
    erased_by           TEXT,
    erased_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The consent log stays append-only, except for the rows of the one person an erasure names
-- (set for its transaction only, by set_config('pregon.erasing', recipient, true)).
CREATE OR REPLACE FUNCTION consent_events_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.recipient = current_setting('pregon.erasing', true) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'consent_events is append-only';
END;
$$ LANGUAGE plpgsql;
