import { describe, expect, it } from "vitest";
import { boundaryOf, MultipartError, MultipartParser, type PartHeaders } from "../../src/app/multipart.js";

interface Part {
  headers: PartHeaders;
  body: Buffer;
}

/** Feed `body` in chunks of `size` bytes and collect the parts. */
function parse(body: Buffer, boundary: string, size: number): Part[] {
  const parts: Part[] = [];
  const parser = new MultipartParser(boundary, (headers) => {
    const chunks: Buffer[] = [];
    return {
      data: (c) => chunks.push(Buffer.from(c)),
      end: () => parts.push({ headers, body: Buffer.concat(chunks) }),
    };
  });
  for (let i = 0; i < body.length; i += size) parser.write(body.subarray(i, i + size));
  parser.end();
  return parts;
}

const B = "----twine-boundary-1234";
const form = (parts: string[], boundary = B): Buffer =>
  Buffer.from(`${parts.map((p) => `--${boundary}\r\n${p}\r\n`).join("")}--${boundary}--\r\n`, "latin1");

describe("boundaryOf", () => {
  it("reads plain and quoted boundaries", () => {
    expect(boundaryOf(`multipart/form-data; boundary=${B}`)).toBe(B);
    expect(boundaryOf('multipart/form-data; charset=utf-8; boundary="a b;c"')).toBe("a b;c");
  });
  it.each([
    [undefined, /multipart\/form-data/],
    ["application/x-www-form-urlencoded", /multipart\/form-data/],
    ["multipart/form-data", /boundary/],
    [`multipart/form-data; boundary=${"x".repeat(71)}`, /boundary/],
  ])("refuses %s", (ct, re) => {
    expect(() => boundaryOf(ct)).toThrow(re);
  });
});

describe("MultipartParser", () => {
  const payload = Buffer.concat([
    Buffer.from("PK\x03\x04", "latin1"),
    Buffer.from(`\r\n--${B.slice(0, 10)}`),
    Buffer.alloc(5000, 7),
  ]);
  const body = Buffer.concat([
    form([
      'Content-Disposition: form-data; name=":action"\r\n\r\nfile_upload',
      'Content-Disposition: form-data; name="name"\r\n\r\nDemo_Pkg',
    ]).subarray(0, -`--${B}--\r\n`.length),
    Buffer.from(
      `--${B}\r\nContent-Disposition: form-data; name="content"; filename="demo-1.0.whl"\r\nContent-Type: application/octet-stream\r\n\r\n`,
    ),
    payload,
    Buffer.from(`\r\n--${B}--\r\n`),
  ]);

  it.each([1, 7, 64, 4096, body.length])("gives the same parts whatever the chunk size (%i)", (size) => {
    const parts = parse(body, B, size);
    expect(parts.map((p) => p.headers.name)).toEqual([":action", "name", "content"]);
    expect(parts[0]?.body.toString()).toBe("file_upload");
    expect(parts[2]?.headers.filename).toBe("demo-1.0.whl");
    expect(parts[2]?.headers.contentType).toBe("application/octet-stream");
    // A near-delimiter inside the data is data.
    expect(parts[2]?.body.equals(payload)).toBe(true);
  });

  it("ignores a preamble and an epilogue", () => {
    const b = Buffer.concat([
      Buffer.from("preamble\r\n"),
      form(['Content-Disposition: form-data; name="a"\r\n\r\n1']),
      Buffer.from("epilogue"),
    ]);
    expect(parse(b, B, 3).map((p) => p.body.toString())).toEqual(["1"]);
  });

  it("refuses a body without its closing boundary (a truncated upload)", () => {
    const cut = body.subarray(0, body.length - 20);
    expect(() => parse(cut, B, 100)).toThrow(/closing boundary/);
  });

  it("refuses parts without form-data disposition or name, and oversized headers", () => {
    expect(() => parse(form(["Content-Type: text/plain\r\n\r\nx"]), B, 50)).toThrow(MultipartError);
    expect(() => parse(form(["Content-Disposition: form-data\r\n\r\nx"]), B, 50)).toThrow(/without a name/);
    const huge = `Content-Disposition: form-data; name="a"\r\nX-Pad: ${"p".repeat(20_000)}\r\n\r\nx`;
    expect(() => parse(form([huge]), B, 1000)).toThrow(/headers too large/);
  });

  it("caps the number of parts", () => {
    const many = form(
      Array.from({ length: 201 }, (_, i) => `Content-Disposition: form-data; name="f${i}"\r\n\r\nv`),
    );
    expect(() => parse(many, B, 4096)).toThrow(/more than 200 form parts/);
  });

  it("lets a sink abort the parse (a size limit while writing)", () => {
    const parser = new MultipartParser(B, () => ({
      data: () => {
        throw new Error("too big");
      },
      end: () => {},
    }));
    expect(() => parser.write(body)).toThrow(/too big/);
  });
});

describe("MultipartParser padding", () => {
  it("refuses unbounded padding after a boundary instead of holding it", () => {
    const parser = new MultipartParser(B, () => ({ data: () => {}, end: () => {} }));
    parser.write(Buffer.from(`--${B}`));
    expect(() => parser.write(Buffer.alloc(64 * 1024, 0x20))).toThrow(/malformed boundary line/);
  });
});
