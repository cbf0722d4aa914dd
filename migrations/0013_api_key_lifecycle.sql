-- API keys can expire, are revoked by an operator (who is recorded), and show when they were
-- last used (written at most once a minute per key).
ALTER TABLE api_keys
    ADD COLUMN expires_at   TIMESTAMPTZ,
    ADD COLUMN last_used_at TIMESTAMPTZ,
    ADD COLUMN revoked_by   TEXT;
