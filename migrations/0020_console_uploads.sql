-- A contact CSV uploaded in the console, kept between its upload and the import its column
-- mapping starts (any API process may serve the next step). Imported or abandoned uploads go.
CREATE TABLE console_uploads (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    file_name  TEXT NOT NULL,
    body       BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
