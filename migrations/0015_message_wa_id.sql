-- The WhatsApp id Meta answered a send with: the person's own address on WhatsApp, which may be
-- spelled differently from the number the message was sent to (Mexico's 1, Argentina's 9,
-- Brazil's ninth digit).
ALTER TABLE messages ADD COLUMN wa_id TEXT;
