-- Where a dead job came from: a send lane (`send`, a SendJob) or the ingest queue (`ingest`, an
-- enqueue request published by another system, sent again by publishing it to the ingest
-- exchange once more).
ALTER TABLE dead_jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'send'
    CHECK (source IN ('send', 'ingest'));
