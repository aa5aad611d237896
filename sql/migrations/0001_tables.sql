-- dispatch-aio storage, version 1.
-- Placeholders: {{schema}} (quoted schema), {{lock_class}} (int4 advisory-lock namespace
-- of this schema), {{channel}} (NOTIFY channel, a string literal).

CREATE SCHEMA IF NOT EXISTS {{schema}};

-- Positions are taken inside the insert trigger, after the subject's lock, so that for
-- one subject position order is commit order (see dispatcher_event_before_insert).
CREATE SEQUENCE {{schema}}.dispatcher_event_position_seq AS bigint;

CREATE TABLE {{schema}}.dispatcher_event (
    position        bigint      NOT NULL,
    -- The writing transaction, set by the trigger whatever the caller sends. Readers only
    -- read below the oldest transaction still running, so no event is skipped.
    xid             xid8        NOT NULL,
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    tenant_id       text        NOT NULL,
    producer        text        NOT NULL,
    subject         text        NOT NULL,
    actor           text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    correlation_id  text,
    causation_id    text,
    traceparent     text,
    payload         jsonb       NOT NULL,
    -- Set by the trigger when an earlier event of the subject (smaller position) has a
    -- larger xid: readers then pull those forward to keep the subject's commit order.
    out_of_order    boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dispatcher_event_pkey PRIMARY KEY (position),
    CONSTRAINT dispatcher_event_event_id_key UNIQUE (event_id)
);

-- The consumer's read: one range scan per subscribed type, in (xid, position) order.
CREATE INDEX dispatcher_event_type_xid_position
    ON {{schema}}.dispatcher_event (event_type, xid, position);
-- Per-subject look-ups: events of a subject committed before one read out of xid order.
CREATE INDEX dispatcher_event_subject_xid
    ON {{schema}}.dispatcher_event (subject, xid);

CREATE FUNCTION {{schema}}.dispatcher_event_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Hold the subject's lock until commit, then take the position: two transactions
    -- publishing for one subject get positions in the order they commit, even when the
    -- later one got its transaction id first.
    PERFORM pg_advisory_xact_lock({{lock_class}}, hashtext(NEW.subject));
    NEW.position := nextval('{{schema}}.dispatcher_event_position_seq');
    NEW.xid := pg_current_xact_id();
    -- Under the lock every earlier event of the subject is committed (or ours) and, in
    -- READ COMMITTED, visible to this fresh snapshot. A stricter isolation level keeps an
    -- older snapshot, so there the flag is set without looking.
    NEW.out_of_order := current_setting('transaction_isolation') <> 'read committed'
        OR EXISTS (
            SELECT 1 FROM {{schema}}.dispatcher_event e
            WHERE e.subject = NEW.subject AND e.xid > NEW.xid
        );
    RETURN NEW;
END
$fn$;

CREATE TRIGGER dispatcher_event_before_insert
    BEFORE INSERT ON {{schema}}.dispatcher_event
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.dispatcher_event_before_insert();

-- One notification per event type and statement; PostgreSQL folds identical ones within
-- a transaction, so a transaction publishing 100 events of one type notifies once.
CREATE FUNCTION {{schema}}.dispatcher_event_notify() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    inserted_type text;
BEGIN
    FOR inserted_type IN SELECT DISTINCT event_type FROM new_events LOOP
        PERFORM pg_notify({{channel}}, inserted_type);
    END LOOP;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER dispatcher_event_notify
    AFTER INSERT ON {{schema}}.dispatcher_event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.dispatcher_event_notify();

-- Per (consumer, event type): everything at or before (last_xid, last_position) has an
-- outcome. A low-water mark: outcomes themselves live in dispatcher_dedup.
CREATE TABLE {{schema}}.dispatcher_cursor (
    consumer        text        NOT NULL,
    event_type      text        NOT NULL,
    last_xid        xid8        NOT NULL DEFAULT '0',
    last_position   bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dispatcher_cursor_pkey PRIMARY KEY (consumer, event_type)
);

-- One row per event a consumer has finished with, committed with the handler's writes.
CREATE TABLE {{schema}}.dispatcher_dedup (
    consumer        text        NOT NULL,
    event_id        text        NOT NULL,
    outcome         text        NOT NULL,
    handled_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dispatcher_dedup_pkey PRIMARY KEY (consumer, event_id),
    CONSTRAINT dispatcher_dedup_outcome_check CHECK (outcome IN ('handled', 'dead_lettered'))
);

CREATE TABLE {{schema}}.dispatcher_dead_letter (
    dead_letter_id      text        NOT NULL,
    consumer            text        NOT NULL,
    event_id            text        NOT NULL,
    event_type          text        NOT NULL,
    schema_version      integer,
    tenant_id           text,
    subject             text,
    envelope            jsonb       NOT NULL,
    error_type          text        NOT NULL,
    error_message       text        NOT NULL,
    error_traceback     text,
    attempts            integer     NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    resolved_at         timestamptz,
    resolved_by         text,
    resolution_note     text,
    replay_status       text,
    replay_requested_at timestamptz,
    replayed_by         text,
    replayed_at         timestamptz,
    replay_error        text,
    CONSTRAINT dispatcher_dead_letter_pkey PRIMARY KEY (dead_letter_id),
    CONSTRAINT dispatcher_dead_letter_replay_status_check
        CHECK (replay_status IN ('pending', 'succeeded', 'failed'))
);

-- The operator's hot path: active dead letters of one consumer, newest first.
CREATE INDEX dispatcher_dead_letter_active_per_consumer
    ON {{schema}}.dispatcher_dead_letter (consumer, created_at DESC, dead_letter_id DESC)
    WHERE resolved_at IS NULL;
CREATE INDEX dispatcher_dead_letter_per_consumer
    ON {{schema}}.dispatcher_dead_letter (consumer, created_at DESC, dead_letter_id DESC);
CREATE INDEX dispatcher_dead_letter_replay_pending
    ON {{schema}}.dispatcher_dead_letter (consumer)
    WHERE replay_status = 'pending';
CREATE INDEX dispatcher_dead_letter_event
    ON {{schema}}.dispatcher_dead_letter (event_id);
