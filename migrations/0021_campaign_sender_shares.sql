-- How a campaign's audience is split over its senders (each recipient sticks to one), written
-- with each planning chunk: a running campaign's page shows each sender's share beside its tier
-- use without counting messages.
CREATE TABLE campaign_sender_shares (
    campaign_id UUID NOT NULL,
    sender      TEXT NOT NULL,
    planned     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, sender)
);
