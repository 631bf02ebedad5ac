import { describe, expect, it } from "vitest";
import { DbUnavailable, isConnectionError } from "../../src/app/db.js";

const withCode = (message: string, code: string, extra: Record<string, string> = {}): Error =>
  Object.assign(new Error(message), { code, ...extra });

describe("isConnectionError", () => {
  it.each([
    new DbUnavailable("backing off"),
    new Error("Connection terminated unexpectedly"),
    new Error("Client has encountered a connection error and is not queryable"),
    withCode("connect ECONNREFUSED 10.0.0.5:5432", "ECONNREFUSED", { syscall: "connect" }),
    withCode("read ECONNRESET", "ECONNRESET", { syscall: "read" }),
    withCode("terminating connection due to administrator command", "57P01"),
    withCode("cannot execute INSERT in a read-only transaction", "25006"),
    withCode("connection failure", "08006"),
  ])("counts %s as the connection's fault", (err) => {
    expect(isConnectionError(err)).toBe(true);
  });

  it.each([
    // An uploader's directory the registrar may not move: one bad entry, not a dead database.
    withCode("EACCES: permission denied, rename '/srv/pypi/incoming/u/upload/0'", "EACCES", {
      syscall: "rename",
      path: "/srv/pypi/incoming/u/upload/0",
    }),
    withCode("EPERM: operation not permitted, link", "EPERM", { syscall: "link", path: "/x" }),
    withCode("ENOSPC: no space left on device, write", "ENOSPC", { syscall: "write" }),
    withCode('duplicate key value violates unique constraint "files_pkey"', "23505"),
    withCode("canceling statement due to statement timeout", "57014"),
    new Error("alice is the last owner of demo-pkg; add another owner first"),
    "not an error",
  ])("does not count %s", (err) => {
    expect(isConnectionError(err)).toBe(false);
  });
});
