-- Jobs that reached the dead-letter queue (attempts used up, redelivered too often, undecodable,
-- or dead-lettered by RabbitMQ itself), taken off `ns.dead` and kept here to be listed, read and
-- sent again by an operator.
CREATE TABLE dead_jobs (
    id          BIGSERIAL PRIMARY KEY,
    message_id  UUID,                -- NULL when the job could not be decoded
    sender      TEXT,
    payload     BYTEA NOT NULL,
    dead_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    redriven_at TIMESTAMPTZ,
    redriven_by TEXT
);
CREATE INDEX dead_jobs_waiting ON dead_jobs (id) WHERE redriven_at IS NULL;
