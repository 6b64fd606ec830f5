-- An operation's steps done are its succeeded tasks, counted when it is read:
-- a stored counter cost every step a second row version (of the operation).
ALTER TABLE operations DROP COLUMN steps_done;
