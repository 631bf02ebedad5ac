-- Upload accounts: SFTP users and the owners of API tokens share one namespace.
CREATE TABLE accounts (
  name       text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_-]{0,31}$'),
  created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO accounts (name)
  SELECT DISTINCT uploader FROM files WHERE uploader ~ '^[a-z_][a-z0-9_-]{0,31}$'
  ON CONFLICT DO NOTHING;

-- Who may upload to a project: its owners (the first registrant, and whom they add) and maintainers.
CREATE TABLE project_roles (
  project    text NOT NULL REFERENCES projects (name),
  account    text NOT NULL REFERENCES accounts (name),
  role       text NOT NULL CHECK (role IN ('owner', 'maintainer')),
  granted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (project, account)
);

-- Projects registered before ownership existed belong to the uploader of their first file.
INSERT INTO project_roles (project, account, role)
  SELECT DISTINCT ON (f.project) f.project, f.uploader, 'owner'
    FROM files f JOIN accounts a ON a.name = f.uploader
   ORDER BY f.project, f.uploaded_at, f.filename;

-- API tokens: only the SHA-256 of the secret is kept. NULL projects = every project the account may upload to.
CREATE TABLE api_tokens (
  id            text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
  account       text NOT NULL REFERENCES accounts (name),
  secret_sha256 text NOT NULL CHECK (secret_sha256 ~ '^[0-9a-f]{64}$'),
  projects      text[],
  description   text NOT NULL DEFAULT '',
  created_at    timestamptz NOT NULL DEFAULT now(),
  last_used_at  timestamptz,
  revoked_at    timestamptz
);

-- PEP 440 equality key and a spelling-independent filename, filled by the app (migrate backfills old rows).
ALTER TABLE files
  ADD COLUMN version_key          text,
  ADD COLUMN canonical_filename   text,
  ADD COLUMN core_metadata_sha256 text CHECK (core_metadata_sha256 ~ '^[0-9a-f]{64}$'),
  ADD COLUMN metadata             jsonb,
  ADD COLUMN via                  text CHECK (via IN ('sftp', 'http')),
  ADD COLUMN yanked_at            timestamptz,
  ADD COLUMN yanked_reason        text;

CREATE UNIQUE INDEX files_canonical_filename ON files (canonical_filename);

-- Static /simple/ and JSON pages are rewritten after each change; a crash in between leaves the flag for the registrar.
ALTER TABLE projects ADD COLUMN pages_dirty boolean NOT NULL DEFAULT true;
