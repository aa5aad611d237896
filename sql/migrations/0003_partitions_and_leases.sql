-- dispatch-aio storage, version 3: partitions, members and leases, per-partition cursors.
-- See docs/adr/0006-partitioned-reads-above-the-horizon.md. Placeholders as in 0001.
--
-- Safe on a large event table: the new column is nullable without a default (a catalog
-- change, no rewrite, no back-fill). Rows inserted before this migration keep NULL and
-- readers compute their partition with dispatcher_partition(subject).

-- The partition of a subject: the first byte of its SHA-256, 256 buckets. Ours, so that it
-- stays the same across PostgreSQL versions (hashtext makes no such promise); immutable,
-- so the planner inlines it into the trigger and into readers' filters.
CREATE FUNCTION {{schema}}.dispatcher_partition(subject text) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT get_byte(sha256(convert_to(subject, 'UTF8')), 0)::smallint
$fn$;

ALTER TABLE {{schema}}.dispatcher_event ADD COLUMN partition smallint;

CREATE OR REPLACE FUNCTION {{schema}}.dispatcher_event_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Hold the subject's lock until commit, then take the position: two transactions
    -- publishing for one subject get positions in the order they commit, even when the
    -- later one got its transaction id first.
    PERFORM pg_advisory_xact_lock({{lock_class}}, hashtext(NEW.subject));
    NEW.position := nextval('{{schema}}.dispatcher_event_position_seq');
    -- The top-level transaction, also inside a savepoint: what pg_snapshot_xip lists.
    NEW.xid := pg_current_xact_id();
    NEW.partition := {{schema}}.dispatcher_partition(NEW.subject);
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

-- The live processes of each consumer. A member is alive while expires_at is ahead;
-- it moves expires_at forward with each heartbeat (one row, whatever it holds).
CREATE TABLE {{schema}}.dispatcher_member (
    consumer        text        NOT NULL,
    member_id       text        NOT NULL,
    host            text        NOT NULL,
    pid             integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    CONSTRAINT dispatcher_member_pkey PRIMARY KEY (consumer, member_id)
);

-- One row per (consumer, partition). Held while owner is a live member; epoch grows by
-- one on every acquisition and is the fencing token checked by outcome transactions.
CREATE TABLE {{schema}}.dispatcher_lease (
    consumer        text        NOT NULL,
    partition       smallint    NOT NULL,
    owner           text,
    epoch           bigint      NOT NULL DEFAULT 0,
    acquired_at     timestamptz,
    CONSTRAINT dispatcher_lease_pkey PRIMARY KEY (consumer, partition),
    CONSTRAINT dispatcher_lease_partition_check CHECK (partition BETWEEN 0 AND 255)
);

-- Per (consumer, event type, partition): everything at or before (last_xid,
-- last_position) has an outcome, and no transaction below last_xid is still running.
-- A missing row falls back to the consumer's per-type row in dispatcher_cursor.
CREATE TABLE {{schema}}.dispatcher_partition_cursor (
    consumer        text        NOT NULL,
    event_type      text        NOT NULL,
    partition       smallint    NOT NULL,
    last_xid        xid8        NOT NULL DEFAULT '0',
    last_position   bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dispatcher_partition_cursor_pkey PRIMARY KEY (consumer, event_type, partition)
);
-- Retention asks, per old event, whether any consumer's cursor of its partition is behind.
CREATE INDEX dispatcher_partition_cursor_type_partition
    ON {{schema}}.dispatcher_partition_cursor (event_type, partition, last_xid, last_position);

-- The advisory-lock key of one consumer's partition: the one-bigint key space, apart from
-- the (int, int) keys of subjects and migrations. A collision between two consumers'
-- hashes costs some waiting, never a wrong answer.
CREATE FUNCTION {{schema}}.dispatcher_lease_key(consumer text, partition integer) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
    SELECT ({{lock_class}}::bigint << 32)
        | ((hashtext(consumer) & 16777215)::bigint << 8)
        | (partition & 255)
$fn$;

-- The fence of an outcome transaction: raises SQLSTATE DA001 unless this member still
-- holds every given partition at the given epoch. A shared lock per partition (sorted)
-- makes an acquisition, which takes the same keys exclusively before it bumps the epoch,
-- wait until this transaction ends; the check then reads with a fresh snapshot (a
-- volatile function in READ COMMITTED). Under a stricter isolation level the snapshot is
-- older, so the lease rows are locked instead: a concurrent takeover then fails this
-- transaction with a serialization error. idle_ms > 0 bounds how long this transaction
-- may then sit idle before COMMIT, so that a paused owner cannot hold a takeover back.
CREATE FUNCTION {{schema}}.dispatcher_lease_fence(
    p_consumer text, p_member text, p_partitions smallint[], p_epochs bigint[], p_idle_ms integer
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    lost text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared({{schema}}.dispatcher_lease_key(p_consumer, p))
    FROM (SELECT DISTINCT unnest(p_partitions)::integer AS p ORDER BY 1) AS sorted;
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT string_agg(f.partition::text, ', ' ORDER BY f.partition) INTO lost
        FROM unnest(p_partitions, p_epochs) AS f(partition, epoch)
        LEFT JOIN {{schema}}.dispatcher_lease l
            ON l.consumer = p_consumer AND l.partition = f.partition
        WHERE l.owner IS DISTINCT FROM p_member OR l.epoch IS DISTINCT FROM f.epoch;
    ELSE
        SELECT string_agg(f.partition::text, ', ' ORDER BY f.partition) INTO lost
        FROM unnest(p_partitions, p_epochs) AS f(partition, epoch)
        WHERE NOT EXISTS (
            SELECT 1 FROM {{schema}}.dispatcher_lease l
            WHERE l.consumer = p_consumer AND l.partition = f.partition
              AND l.owner = p_member AND l.epoch = f.epoch
            FOR SHARE
        );
    END IF;
    IF lost IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'DA001',
            MESSAGE = format('consumer %s member %s no longer holds partition(s) %s',
                             p_consumer, p_member, lost),
            HINT = 'another process took them over; this transaction must roll back';
    END IF;
    IF p_idle_ms > 0 THEN
        PERFORM set_config('idle_in_transaction_session_timeout', p_idle_ms::text, true);
    END IF;
    RETURN true;
END
$fn$;
