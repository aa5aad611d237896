-- dispatch-aio storage, version 2: failed attempts survive a restart.
-- Placeholders: {{schema}} (quoted schema).

-- One row per (consumer, event) that failed at least once and has no outcome yet: a
-- process that restarts continues the count instead of granting fresh retries. Written
-- in a short transaction of its own after each failure; removed by prune with the
-- event's dedup marker.
CREATE TABLE {{schema}}.dispatcher_attempt (
    consumer        text        NOT NULL,
    event_id        text        NOT NULL,
    attempts        integer     NOT NULL,
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dispatcher_attempt_pkey PRIMARY KEY (consumer, event_id)
);
