-- What a campaign was estimated to cost and what it has been billed so far, as counts by recipient
-- country and category (priced in the application from the rate card, so a new card reprices
-- them): `planned` rows are written with each planning chunk, `billed` rows by the statement
-- that folds Meta's statuses, when it reports a billable template delivered (or read: `read` may
-- arrive without `delivered`). Not by a trigger on `messages`: every send updates a row, and a
-- trigger's extra pass over each update cost a third of the campaign send rate.
ALTER TABLE messages ADD COLUMN country TEXT;

CREATE TABLE campaign_costs (
    campaign_id UUID NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('planned', 'billed')),
    country     TEXT NOT NULL,
    category    TEXT NOT NULL,
    n           BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, kind, country, category)
);
