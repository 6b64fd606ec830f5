-- An event's time is when it was written (clock_timestamp()), not when its
-- transaction began (now()). A transaction that began earlier and then
-- waited for the resource's row lock writes the later event; with now() it
-- showed an earlier time than the event before it. Every INSERT into
-- resource_events leaves created_at to this default.
ALTER TABLE resource_events ALTER COLUMN created_at SET DEFAULT clock_timestamp();
