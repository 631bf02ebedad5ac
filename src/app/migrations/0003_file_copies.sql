-- When the file's copy in the backup store was last verified; NULL: not copied yet (existing rows get backfilled by copy-files).
ALTER TABLE files ADD COLUMN copied_at timestamptz;

CREATE INDEX files_uncopied ON files (filename) WHERE copied_at IS NULL;
