-- Every query dispatch-aio runs, by name. {{schema}} is the quoted schema name.
-- {{name(arguments)}} is a fragment's text: a text several queries share, written once in
-- a block that starts `-- fragment:` (the reads' column lists, an event's partition).

-- name: migration_lock
-- Serialises migrate() across processes until the migrating transaction ends.
SELECT pg_advisory_xact_lock({{lock_class}}, 0)

-- name: create_migration_table
CREATE SCHEMA IF NOT EXISTS {{schema}};
CREATE TABLE IF NOT EXISTS {{schema}}.dispatcher_migration (
    version     integer     NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version, name, checksum FROM {{schema}}.dispatcher_migration ORDER BY version

-- name: record_migration
INSERT INTO {{schema}}.dispatcher_migration (version, name, checksum) VALUES ($1, $2, $3)

-- name: migration_table_exists
SELECT to_regclass(format('%I.dispatcher_migration', $1::text)) IS NOT NULL

-- name: schema_version
SELECT coalesce(max(version), 0) FROM {{schema}}.dispatcher_migration

-- name: enable_notify
CREATE OR REPLACE TRIGGER dispatcher_event_notify
    AFTER INSERT ON {{schema}}.dispatcher_event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.dispatcher_event_notify()

-- name: disable_notify
DROP TRIGGER IF EXISTS dispatcher_event_notify ON {{schema}}.dispatcher_event

-- name: notify_enabled
SELECT EXISTS (
    SELECT 1 FROM pg_trigger
    WHERE tgname = 'dispatcher_event_notify'
      AND tgrelid = to_regclass(format('%I.dispatcher_event', $1::text))
)

-- name: insert_event
INSERT INTO {{schema}}.dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, correlation_id, causation_id, traceparent, payload, checked_against,
    xid, position
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, '0', 0)

-- name: insert_events
INSERT INTO {{schema}}.dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, correlation_id, causation_id, traceparent, payload, checked_against,
    xid, position
)
SELECT e.*, '0'::xid8, 0
FROM unnest(
    $1::text[], $2::text[], $3::integer[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::bigint[]
) AS e

-- name: inbox_insert_event
-- An event received from another service keeps its original event_id (and producer,
-- tenant, occurred_at, traceparent); a redelivery meets the event_id key and writes
-- nothing. The insert trigger still sets xid and position, and notifies, as for publish.
-- $12 is the request's whole (validated) body: the payload is stored as it was signed,
-- taken out here rather than encoded again in Python. $13: the digest of the schema the
-- payload was checked against (ADR 0007).
INSERT INTO {{schema}}.dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, correlation_id, causation_id, traceparent, payload, checked_against,
    xid, position
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb -> 'payload', $13, '0', 0)
ON CONFLICT ON CONSTRAINT dispatcher_event_event_id_key DO NOTHING
RETURNING position

-- name: inbox_insert_events
-- Events received together, inserted in one statement and so committed together (one
-- WAL flush and one notification for all). Rows go in by the subject's advisory-lock
-- key, so two such statements never wait on each other's locks in opposite orders; a
-- redelivered event_id writes nothing, and only the event_ids written come back. $12
-- holds the requests' whole bodies and $13 their digests, as in inbox_insert_event.
INSERT INTO {{schema}}.dispatcher_event (
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, correlation_id, causation_id, traceparent, payload, checked_against,
    xid, position
)
SELECT e.event_id, e.event_type, e.schema_version, e.tenant_id, e.producer, e.subject,
       e.actor, e.occurred_at, e.correlation_id, e.causation_id, e.traceparent,
       e.body -> 'payload', e.checked_against, '0'::xid8, 0
FROM unnest(
    $1::text[], $2::text[], $3::integer[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::bigint[]
) WITH ORDINALITY AS e(
    event_id, event_type, schema_version, tenant_id, producer, subject, actor,
    occurred_at, correlation_id, causation_id, traceparent, body, checked_against, ord
)
ORDER BY hashtext(e.subject), e.ord
ON CONFLICT ON CONSTRAINT dispatcher_event_event_id_key DO NOTHING
RETURNING event_id

-- Consumer

-- name: consumer_horizon_check
-- Transaction ids stored at or above the cluster's next id mean the rows came from
-- another cluster (a logical restore): the visibility rule would hide them forever.
-- The largest xid per type is the last entry of (event_type, xid, position): the ORDER BY
-- names the column, qualified, for an unqualified `xid` there would be the bigint output
-- column, which no index has: a sort of every event of the type, seconds on a long log.
SELECT
    pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid,
    (SELECT max(e.xid) FROM unnest($1::text[]) AS t(event_type)
        CROSS JOIN LATERAL (
            SELECT d.xid::text::bigint AS xid FROM {{schema}}.dispatcher_event d
            WHERE d.event_type = t.event_type ORDER BY d.xid DESC LIMIT 1
        ) e) AS max_event_xid,
    (SELECT max(last_xid::text::bigint) FROM {{schema}}.dispatcher_cursor
        WHERE consumer = $2) AS max_cursor_xid

-- name: consumer_init_cursors
-- New cursors start before everything ('beginning') or at the oldest running
-- transaction ('now': events of transactions still open are still delivered).
INSERT INTO {{schema}}.dispatcher_cursor (consumer, event_type, last_xid, last_position)
SELECT $1, t.event_type,
       CASE WHEN $3::boolean THEN pg_snapshot_xmin(pg_current_snapshot()) ELSE '0'::xid8 END, 0
FROM unnest($2::text[]) AS t(event_type)
ON CONFLICT (consumer, event_type) DO NOTHING

-- name: consumer_read_cursors
SELECT event_type, last_xid::text::bigint AS last_xid, last_position
FROM {{schema}}.dispatcher_cursor
WHERE consumer = $1 AND event_type = ANY($2::text[])

-- name: consumer_fetch_replays
-- replay_requested_at tells a new request for a dead letter from one already run.
SELECT dl.dead_letter_id, dl.replay_requested_at, e.position, e.xid::text::bigint AS xid, e.event_id, e.event_type,
       e.schema_version, e.tenant_id, e.producer, e.subject, e.actor,
       CASE WHEN isfinite(e.occurred_at)
            THEN (extract(epoch FROM e.occurred_at) * 1000000)::bigint END AS occurred_us,
       e.correlation_id, e.causation_id, e.traceparent, e.payload::text AS payload,
       0 AS attempts
FROM {{schema}}.dispatcher_dead_letter dl
JOIN {{schema}}.dispatcher_event e ON e.event_id = dl.event_id
WHERE dl.consumer = $1 AND dl.replay_status = 'pending' AND dl.event_type = ANY($2::text[])
ORDER BY dl.replay_requested_at
LIMIT $3

-- name: consumer_record_handled
-- Outcomes of a group, in the group's transaction: $2 the events, $3 those of them that
-- were dead-lettered (the others were handled). Returns the events whose marker did NOT
-- go in, almost always none: another process of this consumer finished them first, and
-- the caller rolls the group back. That is known by its marker, or, once prune has
-- removed the marker, by the stored cursor having passed the event (the cursor only
-- passes events that have an outcome).
WITH ins AS (
    INSERT INTO {{schema}}.dispatcher_dedup (consumer, event_id, outcome)
    SELECT $1, e.event_id,
           CASE WHEN e.event_id = ANY($3::text[]) THEN 'dead_lettered' ELSE 'handled' END
    FROM unnest($2::text[], $4::text[], $5::bigint[], $6::bigint[])
        AS e(event_id, event_type, xid, position)
    WHERE NOT EXISTS (
        SELECT 1 FROM {{schema}}.dispatcher_cursor c
        WHERE c.consumer = $1 AND c.event_type = e.event_type
          AND (c.last_xid, c.last_position) >= (e.xid::text::xid8, e.position)
    )
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING event_id
)
SELECT e.event_id FROM unnest($2::text[]) AS e(event_id)
WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.event_id = e.event_id)

-- name: consumer_outcomes_of
-- Markers of some events, after a commit whose answer was lost: which of them committed.
SELECT event_id, outcome FROM {{schema}}.dispatcher_dedup
WHERE consumer = $1 AND event_id = ANY($2::text[])

-- name: consumer_replays_succeeded
-- Replays, after a commit whose answer was lost: which of them committed as succeeded.
SELECT dead_letter_id FROM {{schema}}.dispatcher_dead_letter
WHERE consumer = $1 AND dead_letter_id = ANY($2::text[]) AND replay_status = 'succeeded'

-- name: consumer_record_dead_letters
INSERT INTO {{schema}}.dispatcher_dead_letter (
    dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
    envelope, error_type, error_message, error_traceback, attempts
)
SELECT d.dead_letter_id, $1, d.event_id, d.event_type, d.schema_version, d.tenant_id,
       d.subject, d.envelope, d.error_type, d.error_message, d.error_traceback, d.attempts
FROM unnest(
    $2::text[], $3::text[], $4::text[], $5::integer[], $6::text[], $7::text[], $8::jsonb[],
    $9::text[], $10::text[], $11::text[], $12::integer[]
) AS d(dead_letter_id, event_id, event_type, schema_version, tenant_id, subject, envelope,
       error_type, error_message, error_traceback, attempts)

-- name: consumer_finish_replays
-- Replayed dead letters that succeeded: resolved, and the event marked handled. Only
-- rows still pending are returned; another process may have finished one first.
WITH done AS (
    UPDATE {{schema}}.dispatcher_dead_letter dl
    SET replay_status = 'succeeded', replayed_at = now(), replay_error = NULL,
        resolved_at = now(), resolved_by = coalesce(dl.replayed_by, 'replay'),
        resolution_note = 'replayed'
    WHERE dl.dead_letter_id = ANY($2::text[]) AND dl.replay_status = 'pending'
      AND dl.resolved_at IS NULL
    RETURNING dl.dead_letter_id, dl.event_id
),
marked AS (
    INSERT INTO {{schema}}.dispatcher_dedup (consumer, event_id, outcome)
    SELECT $1, event_id, 'handled' FROM done
    ON CONFLICT (consumer, event_id) DO UPDATE SET outcome = 'handled', handled_at = now()
)
SELECT dead_letter_id FROM done

-- name: consumer_record_attempt
-- A failed attempt, in a transaction of its own: a restart continues the count.
INSERT INTO {{schema}}.dispatcher_attempt AS a (consumer, event_id, attempts, last_error)
VALUES ($1, $2, $3, $4)
ON CONFLICT (consumer, event_id) DO UPDATE
SET attempts = greatest(a.attempts, EXCLUDED.attempts), last_error = EXCLUDED.last_error,
    updated_at = now()

-- name: consumer_fail_replay
UPDATE {{schema}}.dispatcher_dead_letter
SET replay_status = 'failed', replayed_at = now(), replay_error = $2,
    attempts = attempts + $3
WHERE dead_letter_id = $1 AND replay_status = 'pending'

-- name: consumer_advance_cursors
-- Never backwards: two processes of one consumer may both advance. Committed without
-- waiting for the disk (synchronous_commit off for this statement's own transaction): a
-- cursor is a low-water mark, and one lost in a crash only makes a restart read again
-- events whose dedup markers (committed synchronously, earlier in the WAL) skip them.
-- Any later synchronous commit (prune's, an outcome's) makes it durable too.
INSERT INTO {{schema}}.dispatcher_cursor AS c (consumer, event_type, last_xid, last_position)
SELECT $1, t.event_type, t.last_xid::text::xid8, t.last_position
FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS t(event_type, last_xid, last_position)
CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
ON CONFLICT (consumer, event_type) DO UPDATE
SET last_xid = EXCLUDED.last_xid, last_position = EXCLUDED.last_position, updated_at = now()
WHERE (c.last_xid, c.last_position) < (EXCLUDED.last_xid, EXCLUDED.last_position)

-- Partitions and leases (docs/adr/0006-partitioned-reads-above-the-horizon.md)

-- name: lease_join
-- Registers (or revives) a member, makes sure the consumer's lease rows exist, and tells
-- the other members. $3 host, $4 pid, $5 lease timeout in seconds, $6 partition count.
WITH member AS (
    INSERT INTO {{schema}}.dispatcher_member AS m
        (consumer, member_id, host, pid, expires_at)
    VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8))
    ON CONFLICT (consumer, member_id) DO UPDATE
    SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at
    RETURNING m.expires_at
),
leases AS (
    INSERT INTO {{schema}}.dispatcher_lease (consumer, partition)
    SELECT $1, p::smallint FROM generate_series(0, $6::integer - 1) AS p
    ON CONFLICT (consumer, partition) DO NOTHING
)
SELECT (SELECT expires_at FROM member) AS expires_at, pg_notify({{lease_channel}}, $1) IS NULL

-- name: lease_heartbeat
-- Moves this member's expiry forward; no row back means it was expired and removed:
-- the caller must rejoin and treat every lease as lost.
UPDATE {{schema}}.dispatcher_member
SET heartbeat_at = now(), expires_at = now() + make_interval(secs => $3::float8)
WHERE consumer = $1 AND member_id = $2
RETURNING expires_at

-- name: lease_members
-- The consumer's members, live or not, and the server's clock to compare expiries with.
SELECT member_id, host, pid, started_at, heartbeat_at, expires_at, backlog_at,
       expires_at > now() AS alive, now() AS now
FROM {{schema}}.dispatcher_member
WHERE consumer = $1
ORDER BY member_id

-- name: lease_owners
-- Every lease of the consumer; owner is NULL when free, owner_alive says whether the
-- owner's member row is unexpired (a dead owner's lease can be taken). offered_to is the
-- member a free partition was offered to, while that offer stands: its member alive and
-- the offer younger than a second.
SELECT l.partition, l.owner, l.epoch, l.acquired_at, l.backlog,
       (m.expires_at IS NOT NULL AND m.expires_at > now()) AS owner_alive,
       CASE WHEN l.owner IS NULL AND l.offered_at > now() - interval '1 second'
                 AND o.expires_at > now()
            THEN l.offered_to END AS offered_to
FROM {{schema}}.dispatcher_lease l
LEFT JOIN {{schema}}.dispatcher_member m ON m.consumer = l.consumer AND m.member_id = l.owner
LEFT JOIN {{schema}}.dispatcher_member o
    ON o.consumer = l.consumer AND o.member_id = l.offered_to
WHERE l.consumer = $1
ORDER BY l.partition

-- name: lease_acquire
-- Takes the given partitions that are free or held by an expired member, for a member
-- that is itself alive. The exclusive advisory locks (sorted) wait for outcome
-- transactions of the previous owner that passed their fence; the UPDATE re-checks each
-- row on its latest version, so of two members racing for a partition one gets it.
-- Run it in a transaction with a lock_timeout. Returns what was taken, with new epochs.
WITH me AS MATERIALIZED (
    SELECT 1 FROM {{schema}}.dispatcher_member
    WHERE consumer = $1 AND member_id = $2 AND expires_at > now()
),
wanted AS MATERIALIZED (
    SELECT l.partition
    FROM {{schema}}.dispatcher_lease l
    WHERE l.consumer = $1 AND l.partition = ANY($3::smallint[]) AND EXISTS (SELECT 1 FROM me)
      AND (l.owner IS NULL OR (l.owner <> $2 AND NOT EXISTS (
          SELECT 1 FROM {{schema}}.dispatcher_member m
          WHERE m.consumer = $1 AND m.member_id = l.owner AND m.expires_at > now())))
    ORDER BY l.partition
),
locked AS MATERIALIZED (
    SELECT w.partition, pg_advisory_xact_lock({{schema}}.dispatcher_lease_key($1, w.partition))
    FROM wanted w
)
UPDATE {{schema}}.dispatcher_lease l
SET owner = $2, epoch = l.epoch + 1, acquired_at = now(), offered_to = NULL
FROM locked
WHERE l.consumer = $1 AND l.partition = locked.partition
  AND (l.owner IS NULL OR (l.owner <> $2 AND NOT EXISTS (
      SELECT 1 FROM {{schema}}.dispatcher_member m
      WHERE m.consumer = $1 AND m.member_id = l.owner AND m.expires_at > now())))
RETURNING l.partition, l.epoch

-- name: lease_report_backlog
-- The owner's count of queued events in the partitions it holds ($3 partitions, $4
-- counts), where it changed. With $5 (it grew), the member's backlog_at says when, and
-- the other members are told to look at the group again.
WITH reported AS (
    UPDATE {{schema}}.dispatcher_lease l
    SET backlog = r.backlog
    FROM unnest($3::smallint[], $4::integer[]) AS r(partition, backlog)
    WHERE l.consumer = $1 AND l.owner = $2 AND l.partition = r.partition
      AND l.backlog <> r.backlog
    RETURNING 1
),
stamped AS (
    UPDATE {{schema}}.dispatcher_member
    SET backlog_at = now()
    WHERE consumer = $1 AND member_id = $2 AND $5::boolean
    RETURNING 1
)
SELECT (SELECT count(*) FROM reported) AS reported,
       CASE WHEN $5::boolean THEN pg_notify({{lease_channel}}, $1) IS NULL END AS notified

-- name: lease_offer
-- Releases partitions of this member ($3) for another ($4) to take, and tells the others.
WITH offered AS (
    UPDATE {{schema}}.dispatcher_lease
    SET owner = NULL, offered_to = $4, offered_at = now()
    WHERE consumer = $1 AND owner = $2 AND partition = ANY($3::smallint[])
    RETURNING partition
)
SELECT partition, pg_notify({{lease_channel}}, $1) IS NULL AS notified FROM offered

-- name: lease_release
-- Hands partitions back (after their in-flight events have drained) and tells the others.
WITH released AS (
    UPDATE {{schema}}.dispatcher_lease
    SET owner = NULL
    WHERE consumer = $1 AND owner = $2 AND partition = ANY($3::smallint[])
    RETURNING partition
)
SELECT partition, pg_notify({{lease_channel}}, $1) IS NULL AS notified FROM released

-- name: lease_leave
-- A member stopping cleanly: every lease back, its row gone, the others told.
WITH released AS (
    UPDATE {{schema}}.dispatcher_lease
    SET owner = NULL
    WHERE consumer = $1 AND owner = $2
    RETURNING partition
),
gone AS (
    DELETE FROM {{schema}}.dispatcher_member WHERE consumer = $1 AND member_id = $2
    RETURNING 1
)
SELECT (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM gone) AS left,
       pg_notify({{lease_channel}}, $1) IS NULL AS notified

-- name: lease_expire
-- Housekeeping: removes members expired for more than $2 seconds and frees their leases
-- (acquisition does not need it: an expired owner's lease can be taken anyway). Safe
-- without the fence keys: whoever takes a freed lease takes them.
WITH gone AS (
    DELETE FROM {{schema}}.dispatcher_member
    WHERE consumer = $1 AND expires_at < now() - make_interval(secs => $2::float8)
    RETURNING member_id
),
freed AS (
    UPDATE {{schema}}.dispatcher_lease
    SET owner = NULL
    WHERE consumer = $1 AND owner IN (SELECT member_id FROM gone)
    RETURNING partition
)
SELECT (SELECT array_agg(member_id ORDER BY member_id) FROM gone) AS members,
       (SELECT array_agg(partition ORDER BY partition) FROM freed) AS partitions

-- name: lease_fence
-- The fence on its own (the outcome statements below embed it): raises SQLSTATE DA001
-- unless member $2 holds partitions $3 at epochs $4. Run inside the outcome transaction.
SELECT {{schema}}.dispatcher_lease_fence($1, $2, $3::smallint[], $4::bigint[], $5::integer)

-- name: consumer_record_handled_fenced
-- consumer_record_handled behind the fence ($4 member, $5 partitions, $6 epochs, $7 idle
-- ms): the markers go in only if every lease of the group is still this member's.
-- $2 the events, $3 the dead-lettered among them; returns the events whose marker did
-- not go in. Only those travel back: a handled group answers with no row at all.
WITH fence AS MATERIALIZED (
    SELECT {{schema}}.dispatcher_lease_fence($1, $4, $5::smallint[], $6::bigint[], $7::integer)
        AS ok
), ins AS (
    INSERT INTO {{schema}}.dispatcher_dedup (consumer, event_id, outcome)
    SELECT $1, e.event_id,
           CASE WHEN e.event_id = ANY($3::text[]) THEN 'dead_lettered' ELSE 'handled' END
    FROM unnest($2::text[]) AS e(event_id), fence
    WHERE fence.ok
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING event_id
)
SELECT e.event_id FROM unnest($2::text[]) AS e(event_id)
WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.event_id = e.event_id)

-- name: consumer_record_attempt_fenced
-- consumer_record_attempt behind the fence ($5 member, $6 partition, $7 epoch, $8 idle
-- ms): a process that lost the lease of the event's partition counts no attempt there
-- (the new owner counts its own; a stale count would dead-letter the event early).
WITH fence AS MATERIALIZED (
    SELECT {{schema}}.dispatcher_lease_fence(
        $1, $5, ARRAY[$6::smallint], ARRAY[$7::bigint], $8::integer) AS ok
)
INSERT INTO {{schema}}.dispatcher_attempt AS a (consumer, event_id, attempts, last_error)
SELECT $1, $2, $3, $4 FROM fence WHERE fence.ok
ON CONFLICT (consumer, event_id) DO UPDATE
SET attempts = greatest(a.attempts, EXCLUDED.attempts), last_error = EXCLUDED.last_error,
    updated_at = now()

-- name: partition_cursors_read
-- Stored cursors of (types $2) x (partitions $3); a missing row falls back to the
-- consumer's per-type cursor, then to the beginning.
SELECT t.event_type, p.partition,
       coalesce(pc.last_xid, c.last_xid, '0'::xid8)::text::bigint AS last_xid,
       coalesce(pc.last_position, c.last_position, 0) AS last_position
FROM unnest($2::text[]) AS t(event_type)
CROSS JOIN unnest($3::smallint[]) AS p(partition)
LEFT JOIN {{schema}}.dispatcher_partition_cursor pc
    ON pc.consumer = $1 AND pc.event_type = t.event_type AND pc.partition = p.partition
LEFT JOIN {{schema}}.dispatcher_cursor c
    ON c.consumer = $1 AND c.event_type = t.event_type
ORDER BY t.event_type, p.partition

-- name: partition_cursors_advance
-- Never backwards. Not fenced: a stale owner's cursor is still a correct low-water mark.
-- Committed without waiting for the disk, as consumer_advance_cursors (why it is safe: there).
INSERT INTO {{schema}}.dispatcher_partition_cursor AS c
    (consumer, event_type, partition, last_xid, last_position)
SELECT $1, t.event_type, t.partition, t.last_xid::text::xid8, t.last_position
FROM unnest($2::text[], $3::smallint[], $4::bigint[], $5::bigint[])
    AS t(event_type, partition, last_xid, last_position)
CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
ON CONFLICT (consumer, event_type, partition) DO UPDATE
SET last_xid = EXCLUDED.last_xid, last_position = EXCLUDED.last_position, updated_at = now()
WHERE (c.last_xid, c.last_position) < (EXCLUDED.last_xid, EXCLUDED.last_position)

-- name: partition_cursors_floor
-- Keeps the per-type cursor (dispatcher_cursor: what status and the fence-free outcome
-- check read, and what retention waits for) moving when the consumer's processes store
-- per-partition cursors: up to the lowest of them, once every partition of the type has
-- one (a missing one falls back to this very row, so it holds it back). Never backwards.
-- Committed without waiting for the disk, as consumer_advance_cursors.
UPDATE {{schema}}.dispatcher_cursor c
SET last_xid = f.last_xid, last_position = f.last_position, updated_at = now()
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit, (
    SELECT t.event_type, lo.last_xid, lo.last_position
    FROM unnest($2::text[]) AS t(event_type)
    CROSS JOIN LATERAL (
        SELECT pc.last_xid, pc.last_position
        FROM {{schema}}.dispatcher_partition_cursor pc
        WHERE pc.consumer = $1 AND pc.event_type = t.event_type
        ORDER BY pc.last_xid, pc.last_position
        LIMIT 1
    ) lo
    WHERE (SELECT count(*) FROM {{schema}}.dispatcher_partition_cursor pc
           WHERE pc.consumer = $1 AND pc.event_type = t.event_type) = 256
) f
WHERE c.consumer = $1 AND c.event_type = f.event_type
  AND (c.last_xid, c.last_position) < (f.last_xid, f.last_position)

-- name: status_partitions
-- One row per partition of consumer $1 (types $2): the live owner (NULL: nobody live
-- holds it), its epoch, and the events past the partition's cursors: an upper bound, as
-- in status_consumers (events handled above a cursor count too). One range scan per type
-- from the lowest cursor of that type.
WITH cursors AS MATERIALIZED (
    SELECT t.event_type, p.partition::smallint AS partition,
           coalesce(pc.last_xid, c.last_xid, '0'::xid8) AS last_xid,
           coalesce(pc.last_position, c.last_position, 0) AS last_position
    FROM unnest($2::text[]) AS t(event_type)
    CROSS JOIN generate_series(0, 255) AS p(partition)
    LEFT JOIN {{schema}}.dispatcher_partition_cursor pc
        ON pc.consumer = $1 AND pc.event_type = t.event_type AND pc.partition = p.partition
    LEFT JOIN {{schema}}.dispatcher_cursor c
        ON c.consumer = $1 AND c.event_type = t.event_type
),
floors AS (
    SELECT DISTINCT ON (event_type) event_type, last_xid, last_position
    FROM cursors
    ORDER BY event_type, last_xid, last_position
),
lag AS (
    SELECT cu.partition, count(*) AS lag
    FROM floors f
    JOIN {{schema}}.dispatcher_event e
        ON e.event_type = f.event_type
       AND (e.xid, e.position) > (f.last_xid, f.last_position)
    JOIN cursors cu
        ON cu.event_type = e.event_type
       AND cu.partition = {{partition_of(e)}}
    WHERE (e.xid, e.position) > (cu.last_xid, cu.last_position)
    GROUP BY cu.partition
)
SELECT g.partition::smallint AS partition,
       CASE WHEN m.expires_at > now() THEN l.owner END AS owner,
       coalesce(l.epoch, 0) AS epoch,
       coalesce(lag.lag, 0) AS lag
FROM generate_series(0, 255) AS g(partition)
LEFT JOIN {{schema}}.dispatcher_lease l ON l.consumer = $1 AND l.partition = g.partition
LEFT JOIN {{schema}}.dispatcher_member m ON m.consumer = $1 AND m.member_id = l.owner
LEFT JOIN lag ON lag.partition = g.partition
ORDER BY g.partition

-- name: consumer_unread_by_partition
-- What a process has yet to read of a backlog, per partition (ADR 0006 part E): rows of
-- the types $1 above the frontier ($2, $3) in the partitions of mask $4 (NULL: all),
-- counted over at most $5 rows per type. Bounded: a longer backlog costs $5 index entries
-- per type and reads as that many; its tail, where sharing it matters, is counted exactly.
SELECT u.partition, count(*)::int AS n
FROM unnest($1::text[]) AS t(event_type)
CROSS JOIN LATERAL (
    SELECT {{partition_of(e)}} AS partition
    FROM {{schema}}.dispatcher_event e
    WHERE e.event_type = t.event_type
      AND (e.xid, e.position) > ($2::bigint::text::xid8, $3::bigint)
      AND ($4::bytea IS NULL OR get_bit($4, {{partition_of(e)}}) = 1)
    ORDER BY e.xid, e.position
    LIMIT $5
) u
GROUP BY u.partition

-- fragment: partition_of(e)
-- An event row's partition (ADR 0006): the one stored with it, or its subject's hash for
-- a row written before the column was.
coalesce(e.partition, {{schema}}.dispatcher_partition(e.subject))

-- fragment: read_columns(e)
-- The columns a read takes of an event row, in the order its UNIONs need them.
e.position, e.xid, e.event_id, e.event_type, e.schema_version, e.tenant_id, e.producer,
e.subject, e.actor, e.occurred_at, e.correlation_id, e.causation_id, e.traceparent,
e.payload, e.checked_against, e.out_of_order, {{partition_of(e)}} AS partition

-- fragment: in_stream(e)
-- Whether the event row belongs to stream s of consumer_fetch_streams: its partition is in
-- the stream's mask, and above that partition's floor when the read has floors.
(s.mask IS NULL OR get_bit(s.mask, {{partition_of(e)}}) = 1)
AND (cardinality($10::bigint[]) = 0 OR NOT coalesce(
    (e.xid, e.position) <= (
        ($10::bigint[])[(s.stream - 1) * 256 + {{partition_of(e)}} + 1]::text::xid8,
        ($11::bigint[])[(s.stream - 1) * 256 + {{partition_of(e)}} + 1]),
    false))

-- fragment: read_fields(r, $consumer)
-- What a read returns of each row r, after its kind and stream: as a handler needs it
-- (occurred_at as microseconds, NULL when infinite; the payload as text), with whether
-- $consumer has an outcome for it (`handled`) and its failed attempts so far.
-- Probes by primary key, one per row read: the cost follows the batch, never the size of
-- the consumer's markers (a join may hash or loop over all of them, and so may an EXISTS:
-- planned while the markers looked few, as after a TRUNCATE or for a new consumer, it
-- became a hashed subplan reading every marker on every read, kept for the connection's
-- life by the generic plan). A scalar subquery is never hashed. Attempts rows exist only
-- for events that failed: the attempts probe runs only when the consumer has any (one
-- look per read, not one per row). The snapshot's columns are NULL (see snapshot_row).
r.position, r.xid::text::bigint AS xid, r.event_id, r.event_type, r.schema_version,
r.tenant_id, r.producer, r.subject, r.actor,
CASE WHEN isfinite(r.occurred_at)
     THEN (extract(epoch FROM r.occurred_at) * 1000000)::bigint END AS occurred_us,
r.correlation_id, r.causation_id, r.traceparent, r.payload::text AS payload,
r.checked_against, r.partition,
coalesce((SELECT true FROM {{schema}}.dispatcher_dedup d
          WHERE d.consumer = $consumer AND d.event_id = r.event_id), false) AS handled,
CASE WHEN (SELECT EXISTS (SELECT 1 FROM {{schema}}.dispatcher_attempt
                          WHERE consumer = $consumer))
     THEN (SELECT a.attempts FROM {{schema}}.dispatcher_attempt a
           WHERE a.consumer = $consumer AND a.event_id = r.event_id) END AS attempts,
NULL::bigint AS snapshot_xmin, NULL::bigint AS snapshot_xmax, NULL::bigint[] AS xip

-- fragment: snapshot_row()
-- A read's last row (kind 3): the snapshot of CTE `horizon` (which ids it could not see),
-- its other columns NULL.
SELECT 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL,
       pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint,
       ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x ORDER BY 1)
FROM horizon

-- name: consumer_fetch_streams_begin
-- Begins the read's own transaction (read only), in the same round trip as the setting
-- that makes consumer_fetch_streams reuse one plan. Left to choose, PostgreSQL plans that
-- statement anew for every execution (about 2.5 ms of planning against 0.8 ms of
-- execution for a batch of 50), which is most of the consumer's cost per read in a steady
-- trickle. Its plan does not depend on the parameters' values: index ranges on
-- (event_type, xid, position) either way. SET LOCAL ends with the transaction, so a pool
-- (or a transaction-pooling PgBouncer) never hands the settings to anyone else.
-- A plan kept for every read must also not follow statistics taken while a table was
-- empty (a VACUUM or ANALYZE after a prune, by hand or by autovacuum): they make a scan of
-- dispatcher_dedup or dispatcher_attempt look free, and the plan then scans the whole table
-- for every row read, as it fills (a read of 3,000 rows took 340 ms against 400 markers).
-- Every table the reads touch has the index they need; with sequential scans off they take
-- it whatever the statistics say (the insert trigger does the same: migration 5).
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SET LOCAL plan_cache_mode = force_generic_plan;
SET LOCAL enable_seqscan = off

-- name: consumer_fetch_streams
-- The read of ADR 0006, one round trip, one snapshot. A stream is the subscribed types
-- ($1) over a set of partitions ($4: a 32-byte mask, bit p = partition p; NULL: all), with
-- one frontier ($2, $3) and its watched transaction ids ($5 stream ordinal, $6 xid, $7
-- position up to which that id's rows were read). Per stream, at most $8 rows in (xid,
-- position) order over all its types: kind 0, rows of watched ids; then, only when kind 0
-- was not full, kind 1, rows above the frontier. Kind 2: rows pulled forward for
-- out_of_order candidates (ADR 0002). Kind 3, last: the statement's own snapshot, which
-- says exactly which ids it could not see. `checked_against`: see migration 0006 (ADR
-- 0007). `handled`: consumer $9 has an outcome for it;
-- `attempts`: its failed attempts so far; occurred_at as microseconds (as consumer_fetch).
-- Floors ($10 xid, $11 position; empty arrays: none): a catch-up stream's partitions'
-- own stored cursors, element (stream - 1) * 256 + partition + 1 (NULL: none); rows at
-- or below their partition's floor have outcomes and are not read.
WITH horizon AS MATERIALIZED (
    SELECT pg_current_snapshot() AS s
),
streams AS MATERIALIZED (
    SELECT *
    FROM unnest($2::bigint[], $3::bigint[], $4::bytea[])
        WITH ORDINALITY AS s(frontier_xid, frontier_position, mask, stream)
),
watch AS MATERIALIZED (
    SELECT w.stream, w.xid::text::xid8 AS xid, w.after
    FROM unnest($5::bigint[], $6::bigint[], $7::bigint[]) AS w(stream, xid, after)
),
watched AS MATERIALIZED (
    SELECT s.stream, 0 AS kind, e.*
    FROM streams s
    CROSS JOIN LATERAL (
        SELECT e.*
        FROM unnest($1::text[]) AS t(event_type)
        CROSS JOIN LATERAL (
            SELECT {{read_columns(e)}}
            FROM {{schema}}.dispatcher_event e
            WHERE e.event_type = t.event_type
              AND e.xid = ANY (ARRAY(SELECT w.xid FROM watch w WHERE w.stream = s.stream))
              AND e.position > (SELECT w.after FROM watch w
                                WHERE w.stream = s.stream AND w.xid = e.xid)
              AND {{in_stream(e)}}
            ORDER BY e.xid, e.position
            LIMIT $8
        ) e
        ORDER BY e.xid, e.position
        LIMIT $8
    ) e
),
taken AS (
    SELECT stream, count(*) AS n FROM watched GROUP BY stream
),
ranged AS MATERIALIZED (
    SELECT s.stream, 1 AS kind, e.*
    FROM streams s
    LEFT JOIN taken tk ON tk.stream = s.stream
    CROSS JOIN LATERAL (
        SELECT e.*
        FROM unnest($1::text[]) AS t(event_type)
        CROSS JOIN LATERAL (
            SELECT {{read_columns(e)}}
            FROM {{schema}}.dispatcher_event e
            WHERE e.event_type = t.event_type
              AND (e.xid, e.position) > (s.frontier_xid::text::xid8, s.frontier_position)
              AND {{in_stream(e)}}
            ORDER BY e.xid, e.position
            LIMIT $8 - coalesce(tk.n, 0)
        ) e
        ORDER BY e.xid, e.position
        LIMIT $8 - coalesce(tk.n, 0)
    ) e
    WHERE coalesce(tk.n, 0) < $8
),
candidates AS (
    SELECT * FROM watched UNION ALL SELECT * FROM ranged
),
pulled AS (
    SELECT DISTINCT ON (p.position) c.stream, 2 AS kind, p.*
    FROM (SELECT * FROM candidates WHERE out_of_order) c
    CROSS JOIN LATERAL (
        SELECT {{read_columns(p)}}
        FROM {{schema}}.dispatcher_event p
        WHERE p.subject = c.subject AND p.xid > c.xid AND p.position < c.position
          AND p.event_type = ANY($1::text[])
    ) p
    WHERE NOT EXISTS (SELECT 1 FROM candidates c2 WHERE c2.position = p.position)
    ORDER BY p.position, c.stream
)
SELECT r.kind, r.stream,
       {{read_fields(r, $9)}}
FROM (SELECT * FROM candidates UNION ALL SELECT * FROM pulled) r
UNION ALL
{{snapshot_row()}}

-- name: consumer_fetch_range
-- consumer_fetch_streams for its most common case, at three quarters of its server time per
-- row: one stream ($1 types, frontier $2 xid and $3 position, $4 mask or NULL), with no
-- watched ids and no floors. Same rows, same columns, same kinds (1, 2 and 3; stream 1):
-- at most $5 rows above the frontier in (xid, position) order over all the types, the
-- rows pulled forward for their out_of_order candidates, and the statement's snapshot.
-- `handled` and `attempts` for consumer $6. What it leaves out of the general read is what
-- that read spends on its other cases: a CTE copied into another, the watched ids' scan
-- and the floors' test on every row.
WITH horizon AS MATERIALIZED (
    SELECT pg_current_snapshot() AS s
),
ranged AS (
    SELECT e.*
    FROM unnest($1::text[]) AS t(event_type)
    CROSS JOIN LATERAL (
        SELECT {{read_columns(e)}}
        FROM {{schema}}.dispatcher_event e
        WHERE e.event_type = t.event_type
          AND (e.xid, e.position) > ($2::bigint::text::xid8, $3::bigint)
          AND ($4::bytea IS NULL OR get_bit($4::bytea, {{partition_of(e)}}) = 1)
        ORDER BY e.xid, e.position
        LIMIT $5
    ) e
    ORDER BY e.xid, e.position
    LIMIT $5
),
pulled AS (
    SELECT DISTINCT ON (p.position) p.*
    FROM (SELECT * FROM ranged WHERE out_of_order) c
    CROSS JOIN LATERAL (
        SELECT {{read_columns(p)}}
        FROM {{schema}}.dispatcher_event p
        WHERE p.subject = c.subject AND p.xid > c.xid AND p.position < c.position
          AND p.event_type = ANY($1::text[])
    ) p
    WHERE NOT EXISTS (SELECT 1 FROM ranged c2 WHERE c2.position = p.position)
    ORDER BY p.position
)
SELECT r.kind, 1::bigint AS stream,
       {{read_fields(r, $6)}}
FROM (SELECT 1 AS kind, * FROM ranged UNION ALL SELECT 2, * FROM pulled) r
UNION ALL
{{snapshot_row()}}

-- Dead letters
-- Every dead-letter query takes the tenant as a parameter: NULL reads and writes every
-- tenant's rows, a value limits the statement to that tenant's rows (another tenant's row
-- behaves as absent). Rows are returned with the envelope as text; the service parses it.

-- name: dead_letters_list_active
-- Newest first, strictly after the keyset ($2, $3) (NULLs: from the newest). The shape
-- (consumer =, resolved_at IS NULL, row comparison, ORDER BY) is the partial index
-- dispatcher_dead_letter_active_per_consumer, so a page costs `limit` index entries.
SELECT dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
       envelope::text AS envelope, error_type, error_message, error_traceback, attempts,
       created_at, resolved_at, resolved_by, resolution_note, replay_status,
       replay_requested_at, replayed_by, replayed_at, replay_error
FROM {{schema}}.dispatcher_dead_letter
WHERE consumer = $1
  AND resolved_at IS NULL
  AND (created_at, dead_letter_id)
      < (coalesce($2::timestamptz, 'infinity'::timestamptz), coalesce($3::text, ''))
  AND ($4::text IS NULL OR tenant_id = $4::text)
ORDER BY created_at DESC, dead_letter_id DESC
LIMIT $5

-- name: dead_letters_list_all
-- As dead_letters_list_active, resolved rows included (index dispatcher_dead_letter_per_consumer).
SELECT dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
       envelope::text AS envelope, error_type, error_message, error_traceback, attempts,
       created_at, resolved_at, resolved_by, resolution_note, replay_status,
       replay_requested_at, replayed_by, replayed_at, replay_error
FROM {{schema}}.dispatcher_dead_letter
WHERE consumer = $1
  AND (created_at, dead_letter_id)
      < (coalesce($2::timestamptz, 'infinity'::timestamptz), coalesce($3::text, ''))
  AND ($4::text IS NULL OR tenant_id = $4::text)
ORDER BY created_at DESC, dead_letter_id DESC
LIMIT $5

-- name: dead_letters_list_active_every
-- As dead_letters_list_active, for every consumer (dlq list without a consumer).
SELECT dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
       envelope::text AS envelope, error_type, error_message, error_traceback, attempts,
       created_at, resolved_at, resolved_by, resolution_note, replay_status,
       replay_requested_at, replayed_by, replayed_at, replay_error
FROM {{schema}}.dispatcher_dead_letter
WHERE resolved_at IS NULL
  AND (created_at, dead_letter_id)
      < (coalesce($1::timestamptz, 'infinity'::timestamptz), coalesce($2::text, ''))
  AND ($3::text IS NULL OR tenant_id = $3::text)
ORDER BY created_at DESC, dead_letter_id DESC
LIMIT $4

-- name: dead_letters_list_all_every
-- As dead_letters_list_all, for every consumer.
SELECT dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
       envelope::text AS envelope, error_type, error_message, error_traceback, attempts,
       created_at, resolved_at, resolved_by, resolution_note, replay_status,
       replay_requested_at, replayed_by, replayed_at, replay_error
FROM {{schema}}.dispatcher_dead_letter
WHERE (created_at, dead_letter_id)
      < (coalesce($1::timestamptz, 'infinity'::timestamptz), coalesce($2::text, ''))
  AND ($3::text IS NULL OR tenant_id = $3::text)
ORDER BY created_at DESC, dead_letter_id DESC
LIMIT $4

-- name: dead_letter_get
SELECT dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
       envelope::text AS envelope, error_type, error_message, error_traceback, attempts,
       created_at, resolved_at, resolved_by, resolution_note, replay_status,
       replay_requested_at, replayed_by, replayed_at, replay_error
FROM {{schema}}.dispatcher_dead_letter
WHERE dead_letter_id = $1
  AND ($2::text IS NULL OR tenant_id = $2::text)

-- name: dead_letter_resolve
-- One-shot: of two concurrent calls the second waits for the first's row lock, re-checks
-- `resolved_at IS NULL` on the committed row and updates nothing. A pending replay is
-- cancelled: the operator has dealt with the event.
UPDATE {{schema}}.dispatcher_dead_letter
SET resolved_at = now(),
    resolved_by = $3,
    resolution_note = $4,
    replay_status = CASE WHEN replay_status = 'pending' THEN NULL ELSE replay_status END
WHERE dead_letter_id = $1
  AND ($2::text IS NULL OR tenant_id = $2::text)
  AND resolved_at IS NULL
RETURNING dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
          envelope::text AS envelope, error_type, error_message, error_traceback, attempts,
          created_at, resolved_at, resolved_by, resolution_note, replay_status,
          replay_requested_at, replayed_by, replayed_at, replay_error

-- name: dead_letter_replay
-- Marks an active row for replay; a row already pending is left as it is (idempotent).
UPDATE {{schema}}.dispatcher_dead_letter
SET replay_status = 'pending',
    replay_requested_at = now(),
    replayed_by = $3,
    replay_error = NULL
WHERE dead_letter_id = $1
  AND ($2::text IS NULL OR tenant_id = $2::text)
  AND resolved_at IS NULL
  AND replay_status IS DISTINCT FROM 'pending'
RETURNING dead_letter_id, consumer, event_id, event_type, schema_version, tenant_id, subject,
          envelope::text AS envelope, error_type, error_message, error_traceback, attempts,
          created_at, resolved_at, resolved_by, resolution_note, replay_status,
          replay_requested_at, replayed_by, replayed_at, replay_error

-- name: dead_letters_replay_all
-- Marks every active, not yet pending row of a consumer ($2: event type or NULL for all);
-- returns how many rows it marked.
WITH marked AS (
    UPDATE {{schema}}.dispatcher_dead_letter
    SET replay_status = 'pending',
        replay_requested_at = now(),
        replayed_by = $3,
        replay_error = NULL
    WHERE consumer = $1
      AND resolved_at IS NULL
      AND replay_status IS DISTINCT FROM 'pending'
      AND ($2::text IS NULL OR event_type = $2::text)
      AND ($4::text IS NULL OR tenant_id = $4::text)
    RETURNING 1
)
SELECT count(*) FROM marked

-- name: dead_letter_notify_replay
-- Wakes the consumer named by the payload; delivered only if the marking commits.
SELECT pg_notify({{replay_channel}}, $1::text)

-- Status

-- name: status_consumers
-- Lag counts the events past the stored cursor: an upper bound, since the cursor is a
-- low-water mark and events handled out of order past it are counted too.
SELECT c.consumer, c.event_type, c.last_xid::text::bigint AS last_xid, c.last_position,
       c.updated_at,
       (SELECT count(*) FROM {{schema}}.dispatcher_event e
         WHERE e.event_type = c.event_type
           AND (e.xid, e.position) > (c.last_xid, c.last_position)) AS lag,
       (SELECT e.created_at FROM {{schema}}.dispatcher_event e
         WHERE e.event_type = c.event_type
           AND (e.xid, e.position) > (c.last_xid, c.last_position)
         ORDER BY e.xid, e.position LIMIT 1) AS oldest_pending_at,
       (SELECT count(*) FROM {{schema}}.dispatcher_dead_letter d
         WHERE d.consumer = c.consumer AND d.event_type = c.event_type
           AND d.resolved_at IS NULL) AS dead_letters,
       now() AS now,
       -- Held: the first event past the cursor has no outcome while a later one of the
       -- type has: the cursor waits for that one event (a hung or slow handler).
       CASE WHEN head.event_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM {{schema}}.dispatcher_dedup d
                             WHERE d.consumer = c.consumer AND d.event_id = head.event_id)
             AND EXISTS (SELECT 1 FROM {{schema}}.dispatcher_event e
                         JOIN {{schema}}.dispatcher_dedup d
                           ON d.consumer = c.consumer AND d.event_id = e.event_id
                         WHERE e.event_type = c.event_type
                           AND (e.xid, e.position) > (head.xid, head.position))
            THEN head.event_id END AS held_by_event_id,
       head.created_at AS head_created_at
FROM {{schema}}.dispatcher_cursor c
LEFT JOIN LATERAL (
    SELECT e.event_id, e.xid, e.position, e.created_at FROM {{schema}}.dispatcher_event e
    WHERE e.event_type = c.event_type AND (e.xid, e.position) > (c.last_xid, c.last_position)
    ORDER BY e.xid, e.position LIMIT 1
) head ON true
WHERE $1::text IS NULL OR c.consumer = $1
ORDER BY c.consumer, c.event_type

-- name: status_last_activity
-- Per consumer, when a cursor of it last moved (or was made, when the consumer first
-- started): a cursor moves as events get outcomes, so this is its last sign of work.
SELECT consumer, max(updated_at) AS last_activity_at, now() AS now
FROM (
    SELECT consumer, updated_at FROM {{schema}}.dispatcher_cursor
    WHERE $1::text IS NULL OR consumer = $1
    UNION ALL
    SELECT consumer, updated_at FROM {{schema}}.dispatcher_partition_cursor
    WHERE $1::text IS NULL OR consumer = $1
) cursors
GROUP BY consumer
ORDER BY consumer

-- name: consumer_forget
-- Removes a retired consumer's cursors (per type and per partition), dedup markers,
-- attempts, leases and expired member rows, in one statement: nothing is removed while
-- a live member of it exists (the member table is the liveness record). Returns what
-- was removed, and how many live members refused it.
WITH live AS MATERIALIZED (
    SELECT count(*) AS n FROM {{schema}}.dispatcher_member
    WHERE consumer = $1 AND expires_at > now()
),
cursors AS (
    DELETE FROM {{schema}}.dispatcher_cursor
    WHERE consumer = $1 AND (SELECT n FROM live) = 0 RETURNING 1
),
partition_cursors AS (
    DELETE FROM {{schema}}.dispatcher_partition_cursor
    WHERE consumer = $1 AND (SELECT n FROM live) = 0 RETURNING 1
),
markers AS (
    DELETE FROM {{schema}}.dispatcher_dedup
    WHERE consumer = $1 AND (SELECT n FROM live) = 0 RETURNING 1
),
attempts AS (
    DELETE FROM {{schema}}.dispatcher_attempt
    WHERE consumer = $1 AND (SELECT n FROM live) = 0 RETURNING 1
),
leases AS (
    DELETE FROM {{schema}}.dispatcher_lease
    WHERE consumer = $1 AND (SELECT n FROM live) = 0 RETURNING 1
),
members AS (
    DELETE FROM {{schema}}.dispatcher_member
    WHERE consumer = $1 AND (SELECT n FROM live) = 0 RETURNING 1
)
SELECT (SELECT n FROM live) AS live,
       (SELECT count(*) FROM cursors) + (SELECT count(*) FROM partition_cursors) AS cursors,
       (SELECT count(*) FROM markers) AS markers,
       (SELECT count(*) FROM attempts) AS attempts,
       (SELECT count(*) FROM leases) AS leases,
       (SELECT count(*) FROM members) AS members

-- name: status_horizon_holders
-- Open transactions that hold an xid, in any database: each keeps every consumer from
-- reading events committed after it began. Prepared transactions count too.
SELECT 'backend' AS kind, a.pid, NULL::text AS gid, a.datname AS database,
       a.usename AS user_name, a.application_name, a.state,
       a.backend_xid::text AS xid,
       extract(epoch FROM now() - coalesce(a.xact_start, now()))::float8 AS age_seconds,
       left(a.query, 200) AS query
FROM pg_stat_activity a
WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
UNION ALL
SELECT 'prepared', NULL, p.gid, p.database, p.owner, NULL, 'prepared',
       p.transaction::text,
       extract(epoch FROM now() - p.prepared)::float8, NULL
FROM pg_prepared_xacts p
ORDER BY age_seconds DESC

-- Retention

-- name: prune_events
-- One batch of old events that no consumer still needs: every cursor on their type has
-- passed them (per type, and per partition for partitioned consumers), no unresolved dead
-- letter points at them, and no dedup marker of theirs is younger than a minute. Their
-- dedup markers go with them. Oldest first, by position (the primary key), so a batch
-- stops at $2 rows. A process still holding such an event in memory learns it was
-- finished elsewhere from the cursor (consumer_record_handled); the minute covers an
-- outcome statement that began before that cursor moved.
WITH doomed AS (
    SELECT e.position, e.event_id
    FROM {{schema}}.dispatcher_event e
    WHERE e.created_at < now() - make_interval(secs => $1::float8)
      AND NOT EXISTS (
          SELECT 1 FROM {{schema}}.dispatcher_cursor c
          WHERE c.event_type = e.event_type
            AND (c.last_xid, c.last_position) < (e.xid, e.position)
      )
      AND NOT EXISTS (
          -- Partitioned consumers (ADR 0006): the cursor of the event's own partition.
          SELECT 1 FROM {{schema}}.dispatcher_partition_cursor pc
          WHERE pc.event_type = e.event_type
            AND pc.partition = {{partition_of(e)}}
            AND (pc.last_xid, pc.last_position) < (e.xid, e.position)
      )
      AND NOT EXISTS (
          SELECT 1 FROM {{schema}}.dispatcher_dead_letter d
          WHERE d.event_id = e.event_id AND d.resolved_at IS NULL
      )
      AND NOT EXISTS (
          SELECT 1 FROM {{schema}}.dispatcher_dedup m
          WHERE m.event_id = e.event_id AND m.handled_at > now() - interval '1 minute'
      )
    ORDER BY e.position
    LIMIT $2
),
gone AS (
    DELETE FROM {{schema}}.dispatcher_event e
    USING doomed
    WHERE e.position = doomed.position
    RETURNING e.event_id
),
markers AS (
    DELETE FROM {{schema}}.dispatcher_dedup d
    USING gone, (SELECT consumer FROM {{schema}}.dispatcher_cursor
                 UNION SELECT consumer FROM {{schema}}.dispatcher_partition_cursor) c
    WHERE d.consumer = c.consumer AND d.event_id = gone.event_id
    RETURNING 1
),
attempts AS (
    DELETE FROM {{schema}}.dispatcher_attempt a
    USING gone
    WHERE a.event_id = gone.event_id
)
SELECT (SELECT count(*) FROM gone) AS events, (SELECT count(*) FROM markers) AS markers

-- Testing

-- name: published_events
-- What code under test published, optionally of one type and/or subject.
SELECT event_id, event_type, schema_version, occurred_at, tenant_id, producer, subject,
       actor, payload::text AS payload, correlation_id, causation_id, traceparent
FROM {{schema}}.dispatcher_event
WHERE ($1::text IS NULL OR event_type = $1::text)
  AND ($2::text IS NULL OR subject = $2::text)
ORDER BY position
