-- Projects are keyed by their PEP 503 normalized name.
CREATE TABLE projects (
  name         text PRIMARY KEY CHECK (name ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'),
  display_name text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now()
);

-- A filename is unique forever (PyPI's rule): it is never overwritten or reused.
-- 'pending' rows are registrations in progress; only 'ok' rows are served.
CREATE TABLE files (
  filename        text PRIMARY KEY,
  project         text NOT NULL REFERENCES projects (name),
  version         text NOT NULL,
  packagetype     text NOT NULL CHECK (packagetype IN ('bdist_wheel', 'sdist')),
  sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  size            bigint NOT NULL CHECK (size >= 0),
  requires_python text,
  uploader        text NOT NULL,
  uploaded_at     timestamptz NOT NULL DEFAULT now(),
  state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ok'))
);

CREATE INDEX files_project_ok ON files (project, filename) WHERE state = 'ok';
CREATE INDEX files_pending ON files (filename) WHERE state = 'pending';

-- /_health proves the writer accepts writes by upserting its own row here.
CREATE TABLE health_probe (
  node       text PRIMARY KEY,
  checked_at timestamptz NOT NULL
);
