-- Jobs committed with their message rows: a message is accepted only once its row and its job
-- are in one commit; the job leaves this table once RabbitMQ confirmed it. Whatever happens to the
-- request after the commit (a client that hangs up, a process killed before the publish, a broker
-- that is down), the relay publishes what is left here.
CREATE TABLE job_outbox (
    message_id  UUID PRIMARY KEY,
    routing_key TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX job_outbox_age ON job_outbox (created_at);
