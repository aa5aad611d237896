-- dispatch-aio storage, version 6: an event remembers the schema its payload was checked
-- against when it was published (docs/adr/0007-payloads-checked-once.md).
-- Placeholders: {{schema}} (quoted schema).
--
-- checked_against: the digest of the payload schema (and of the rules the check follows)
-- that publish checked this payload against; NULL when no publish of this library did
-- (a row written by hand, by another tool, by an older version). A consumer whose own
-- schema for the event's type and version has the same digest knows the check would pass
-- again and skips it; any other row is checked as before. No default: on PostgreSQL 11
-- and later this changes the catalog only, and no row is rewritten or scanned.
ALTER TABLE {{schema}}.dispatcher_event ADD COLUMN checked_against bigint;

-- Only an insert may say a payload was checked. An update that changes what was checked
-- (the payload, or the type and version that name its schema) clears the digest, whatever
-- the statement sets it to: the row is checked again when it is consumed.
CREATE FUNCTION {{schema}}.dispatcher_event_unchecked() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.checked_against := NULL;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER dispatcher_event_unchecked
    BEFORE UPDATE OF payload, event_type, schema_version, checked_against
    ON {{schema}}.dispatcher_event
    FOR EACH ROW
    WHEN (NEW.checked_against IS NOT NULL AND (
        NEW.payload IS DISTINCT FROM OLD.payload
        OR NEW.event_type IS DISTINCT FROM OLD.event_type
        OR NEW.schema_version IS DISTINCT FROM OLD.schema_version
        OR NEW.checked_against IS DISTINCT FROM OLD.checked_against))
    EXECUTE FUNCTION {{schema}}.dispatcher_event_unchecked();
