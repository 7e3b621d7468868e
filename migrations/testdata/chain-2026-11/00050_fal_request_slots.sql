-- +goose Up
-- A claim of a fal key takes one of the key's FAL_KEY_MAX_IN_FLIGHT slots
-- (1..cap) instead of counting the open requests under a global advisory
-- lock. The unique index lets each slot of a key be held by one open request
-- at a time, so concurrent claims of different slots (or keys) do not wait
-- for each other, and two claims of the same slot cannot both commit: the
-- second inserts nothing and tries another slot or key. A row frees its slot
-- when it is finished (finished_at set), exactly when it stops counting.
--
-- Rows claimed before this migration have no slot. They still count: a claim
-- takes one slot off the top of the key's range for each open row without one.
ALTER TABLE fal_requests ADD COLUMN slot int CHECK (slot >= 1);
COMMENT ON COLUMN fal_requests.slot IS 'The in-flight slot (1..FAL_KEY_MAX_IN_FLIGHT) of key_index this request holds while open; NULL for rows claimed before slots existed.';

-- Also serves every "open rows of a key" read (leading key_index, same
-- predicate), so the old index on key_index alone goes.
CREATE UNIQUE INDEX fal_requests_open_slot ON fal_requests (key_index, slot) WHERE finished_at IS NULL;
DROP INDEX fal_requests_open_key;

-- +goose Down
CREATE INDEX IF NOT EXISTS fal_requests_open_key ON fal_requests (key_index) WHERE finished_at IS NULL;
DROP INDEX IF EXISTS fal_requests_open_slot;
ALTER TABLE fal_requests DROP COLUMN IF EXISTS slot;
