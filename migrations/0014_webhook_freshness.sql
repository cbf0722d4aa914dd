-- When Meta made the change each health field and template field holds (the webhook entry's
-- `time`), so a replayed or late update older than the state it would change is not applied.
ALTER TABLE senders
    ADD COLUMN quality_at TIMESTAMPTZ,
    ADD COLUMN status_at  TIMESTAMPTZ,
    ADD COLUMN tier_at    TIMESTAMPTZ;
ALTER TABLE templates
    ADD COLUMN status_at   TIMESTAMPTZ,
    ADD COLUMN quality_at  TIMESTAMPTZ,
    ADD COLUMN category_at TIMESTAMPTZ;
