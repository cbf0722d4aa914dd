-- People who use the console. Roles and sender limits mean what they mean for API keys.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE CHECK (email = lower(email)),
    -- argon2id, in the PHC string format (algorithm, parameters and salt travel with the hash).
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'marketing', 'viewer')),
    senders       TEXT[],               -- NULL: every sender
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled_at   TIMESTAMPTZ
);

-- Signed-in browsers. The cookie holds a random secret; only its SHA-256 is stored, so a copy
-- of this table signs no one in.
CREATE TABLE console_sessions (
    token_hash   BYTEA PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Every form carries it; a POST without it is refused.
    csrf_token   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);

-- Failed sign-ins, counted per address and per client over a window to slow down guessing.
CREATE TABLE login_failures (
    email     TEXT NOT NULL,
    client    TEXT NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_email ON login_failures (email, failed_at);
CREATE INDEX login_failures_client ON login_failures (client, failed_at);

-- Who created a campaign, as the same actor text its events carry ("api_key:…", "user:…").
ALTER TABLE campaigns ADD COLUMN created_by TEXT;
