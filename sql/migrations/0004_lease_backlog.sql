-- dispatch-aio storage, version 4: members even out their backlogs.
-- Placeholders: {{schema}} (quoted schema).
-- (docs/adr/0006-partitioned-reads-above-the-horizon.md, part E.) Every column has a
-- constant default or none: on PostgreSQL 11 and later this changes the catalog only,
-- and no row is rewritten or scanned.

-- backlog: events queued in the partition (read by its owner, no outcome yet), as the
-- owner last reported it. offered_to/offered_at: the partition was released for that
-- member to take (it had the smaller backlog); the offer lapses when that member is gone
-- or after a second. Hints for who takes what, never for what may be handled: the lease
-- and its epoch alone say that.
ALTER TABLE {{schema}}.dispatcher_lease
    ADD COLUMN backlog integer NOT NULL DEFAULT 0,
    ADD COLUMN offered_to text,
    ADD COLUMN offered_at timestamptz;

-- When the member last reported a change of backlog: plans wait until reports settle.
ALTER TABLE {{schema}}.dispatcher_member
    ADD COLUMN backlog_at timestamptz;
